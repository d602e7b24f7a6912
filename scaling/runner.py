"""The sweep runner: from a planned grid to finished runs, resumable and fault-tolerant.

The scheduling logic here is pure bookkeeping over an injected Executor (scaling/executors.py):
it decides what to run (skip / resume / run / retry), orders runs longest first, starts them in
that order while their resources fit beside the runs in flight, records every state change in the
run store, retries failures up to max_retries, and rebuilds the results table. The product path uses the Ray executor; tests of this
logic may inject another.
"""

from __future__ import annotations

import time
import traceback as tb
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

from scaling.lease import LeaseLost
from scaling.runspec import RunSpec
from scaling.store import RunState, RunStore

# Cost model for longest-first ordering: seconds ~ steps x per-step overhead + FLOPs / throughput.
# Rough CPU figures (one thread); only the order matters, not the values.
STEP_OVERHEAD_S = 3e-3
FLOPS_PER_S = 2e10


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. worker_died: the process vanished (killed, OOM) rather than raised."""

    ok: bool
    error: str | None = None
    traceback: str | None = None
    worker_died: bool = False
    summary: dict | None = None


class Executor(Protocol):
    def fits(self, spec: RunSpec, running: list[RunSpec]) -> bool:
        """Whether `spec` may start now, beside the runs in flight."""

    def submit(self, spec: RunSpec, run_dir: Path) -> object:
        """Start one run; return a handle."""

    def wait(self, handles: list[object], timeout_s: float) -> list[tuple[object, Outcome]]:
        """Handles that finished within the timeout, with their outcomes."""

    def cancel(self, handles: list[object]) -> None: ...


@dataclass(frozen=True)
class Decision:
    spec: RunSpec
    action: str  # run | resume | retry | skip
    reason: str


@dataclass
class SweepOutcome:
    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def resource_need(spec: RunSpec) -> dict[str, float]:
    """What a run holds while it trains, in Ray's resource names (all its workers together)."""
    res = spec.resources
    need = {"CPU": res.cpus_per_worker * res.workers}
    if res.gpus_per_worker:
        need["GPU"] = res.gpus_per_worker * res.workers
    return need


def fits_alongside(total: Mapping[str, float], running: list[RunSpec], spec: RunSpec,
                   max_concurrent: int | None = None) -> bool:
    """Whether `spec` fits in what the runs in flight leave of `total`. Runs of one sweep may ask
    for different resources (resources.tiers), so this counts resources, not runs. With nothing in
    flight a run always starts: one larger than the cluster waits in Ray's queue for nodes to join
    (RayExecutor refuses it up front on a Ray of its own)."""
    if max_concurrent and len(running) >= max_concurrent:
        return False
    if not running:
        return True
    used: dict[str, float] = {}
    for other in running:
        for name, amount in resource_need(other).items():
            used[name] = used.get(name, 0.0) + amount
    return all(used.get(name, 0.0) + amount <= total.get(name, 0.0) + 1e-9
               for name, amount in resource_need(spec).items())


def estimated_seconds(spec: RunSpec) -> float:
    return spec.steps * STEP_OVERHEAD_S + spec.achieved_flops / FLOPS_PER_S


def decide(store: RunStore, spec: RunSpec) -> Decision:
    """What a run needs, and why: the result record decides 'done', a checkpoint 'resume'."""
    return decision(spec, store.state(spec.run_id))


def decision(spec: RunSpec, state: RunState) -> Decision:
    if state.has_result:
        return Decision(spec, "skip", "result.json present")
    if state.has_checkpoint:
        return Decision(spec, "resume", f"checkpoint present (was {state.state})")
    if state.state == "failed":
        return Decision(spec, "retry", f"failed before: {state.error or 'no reason recorded'}")
    if state.state in ("running", "interrupted"):
        return Decision(spec, "run", f"was {state.state}, no checkpoint yet")
    return Decision(spec, "run", "new")


def plan_actions(store: RunStore, specs: list[RunSpec]) -> list[Decision]:
    snapshot = store.snapshot([spec.run_id for spec in specs])
    return [decision(spec, snapshot[spec.run_id][0]) for spec in specs]


class Progress(Protocol):
    def update(self, *, done: int, running: int, failed: int, total: int, flops_done: float,
               flops_total: float, event: str | None) -> None: ...


def run_sweep(specs: list[RunSpec], store: RunStore, executor: Executor,
              progress: Progress | None = None, poll_s: float = 0.5,
              on_event: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run every unfinished spec; never retrain a run that has its result record."""
    sweep = _Sweep.start(specs, store, executor, progress, on_event)
    stood_down = False
    try:
        while sweep.pending or sweep.inflight:
            store.check_driving()  # another driver took the sweep: stand down (scaling/lease.py)
            sweep.admit()
            finished = executor.wait(list(sweep.inflight), poll_s)
            store.check_driving()  # again: the wait is where a suspended driver wakes up
            for handle, result in finished:
                sweep.settle(sweep.inflight.pop(handle), result)
    except LeaseLost:
        stood_down = True  # the other driver owns every run's status now: write none
        executor.cancel(list(sweep.inflight))
        raise
    except KeyboardInterrupt:
        sweep.interrupt()
        raise
    finally:
        if not stood_down:
            store.rebuild_results(specs)
    return sweep.outcome


@dataclass
class _Sweep:
    """The driver's bookkeeping during one run_sweep: what waits, what runs, what it reported."""

    specs: list[RunSpec]
    store: RunStore
    executor: Executor
    progress: Progress | None
    on_event: Callable[[str], None] | None
    outcome: SweepOutcome
    pending: list[RunSpec]  # in start order: longest first, retries at the front
    attempts: dict[str, int]  # this driver's attempts per run
    flops_done: float
    inflight: dict[object, RunSpec] = field(default_factory=dict)
    active: dict[str, RunSpec] = field(default_factory=dict)  # marked running, not yet settled

    @classmethod
    def start(cls, specs, store, executor, progress, on_event) -> "_Sweep":
        outcome = SweepOutcome()
        decisions = plan_actions(store, specs)
        outcome.skipped = [d.spec.run_id for d in decisions if d.action == "skip"]
        for run_id in outcome.skipped:  # the record exists but the driver died before saying so
            if store.read_status(run_id).get("state") != "succeeded":
                store.write_status(run_id, "succeeded", reconciled=True)
        todo = sorted((d.spec for d in decisions if d.action != "skip"), key=estimated_seconds,
                      reverse=True)  # longest first shortens the makespan
        skipped = set(outcome.skipped)
        sweep = cls(specs, store, executor, progress, on_event, outcome, todo,
                    {s.run_id: 0 for s in todo},
                    sum(s.achieved_flops for s in specs if s.run_id in skipped))
        sweep.report()
        return sweep

    def report(self, event: str | None = None) -> None:
        if event and self.on_event:
            self.on_event(event)
        if self.progress:
            self.progress.update(
                done=len(self.outcome.succeeded) + len(self.outcome.skipped),
                running=len(self.inflight), failed=len(self.outcome.failed), total=len(self.specs),
                flops_done=self.flops_done, flops_total=sum(s.achieved_flops for s in self.specs),
                event=event)

    def admit(self) -> None:
        """Start pending runs, in order (no starving a large one), while they fit."""
        while self.pending and self.executor.fits(self.pending[0], list(self.inflight.values())):
            spec = self.pending.pop(0)
            self.attempts[spec.run_id] += 1
            self.active[spec.run_id] = spec
            self.store.write_spec(spec)
            prior = self.store.read_status(spec.run_id).get("attempts", 0)
            self.store.write_status(spec.run_id, "running", attempts=int(prior) + 1,
                                    started_at=time.time())
            self.inflight[self.executor.submit(spec, self.store.run_dir(spec.run_id))] = spec

    def settle(self, spec: RunSpec, result: Outcome) -> None:
        """Record how an attempt ended: succeeded, retried next, or failed for good. The run
        leaves `active` only once its status is written (a Ctrl-C in between still settles it)."""
        if result.ok and self.store.read_result(spec.run_id) is not None:
            self.store.write_status(spec.run_id, "succeeded", finished_at=time.time())
            self.active.pop(spec.run_id, None)
            self.outcome.succeeded.append(spec.run_id)
            self.outcome.failed.pop(spec.run_id, None)
            self.flops_done += spec.achieved_flops
            self.report(f"done {spec.run_id}")
            return
        error = result.error or "the run ended without writing result.json"
        self.store.write_status(spec.run_id, "failed", error=error, traceback=result.traceback,
                                worker_died=result.worker_died, finished_at=time.time())
        self.active.pop(spec.run_id, None)
        if self.attempts[spec.run_id] <= spec.max_retries:
            self.pending.insert(0, spec)  # retry next, resuming from its checkpoint if any
            self.report(f"retry {spec.run_id} ({error})")
        else:
            self.outcome.failed[spec.run_id] = error
            self.report(f"failed {spec.run_id}: {error}")

    def interrupt(self) -> None:
        """Ctrl-C: cancel the runs in flight and mark every run not settled."""
        self.outcome.interrupted = True
        self.executor.cancel(list(self.inflight))
        for spec in self.active.values():  # also a run caught between its status write and dispatch
            done = self.store.read_result(spec.run_id) is not None
            self.store.write_status(spec.run_id, "succeeded" if done else "interrupted",
                                    **({} if done else {"error": "interrupted by the user"}))


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(one-line reason, full traceback) of an exception raised by a run."""
    text = "".join(tb.format_exception(exc))
    line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {line}" if type(exc).__name__ not in line else line, text
