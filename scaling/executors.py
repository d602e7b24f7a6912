"""Executors: where runs execute. The runner takes one of these; the product path uses Ray.

RayExecutor, embedded by default: with no address it starts a local Ray (all CPUs, dashboard off
unless asked) and shuts it down on close; with an address (or RAY_ADDRESS) it joins an existing
cluster. Each slot is a Ray actor (RunSlot) with the run's CPUs/GPUs; every run gets a fresh process of its
own, forked from the slot's fork server, because DeepSpeed cannot initialise twice in one process.
Runs with several workers go through Ray Train instead (scaling/multiworker.py). Ray's own retries
are off; the runner counts attempts itself so that each one is recorded.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from scaling.errors import UserError
from scaling.runner import Outcome, describe_exception
from scaling.runspec import RunSpec

WORKER_ENV = {
    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
# Fault injection for the fault-tolerance tests travels to the workers when the driver has it set.
if os.environ.get("SCALING_FAULT_INJECT"):
    WORKER_ENV["SCALING_FAULT_INJECT"] = os.environ["SCALING_FAULT_INJECT"]


class RunSlot:
    """A Ray actor holding one slot's fork server (scaling/forkserver.py): each run is a fresh
    forked process, but the imports are paid once per slot."""

    def __init__(self):
        from scaling.forkserver import Zygote

        self.zygote = Zygote()

    def warm(self) -> int:
        if self.zygote.proc is None:
            self.zygote._start()
        return self.zygote.proc.pid

    def run(self, spec_json: str, run_dir: str, cache_root: str | None) -> dict:
        return self.zygote.run(spec_json, run_dir, cache_root)

    def abort(self) -> None:
        self.zygote.abort()

    def close(self) -> None:
        self.zygote.close()


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: the given address, else $RAY_ADDRESS; None = start a local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT where nothing answers fails in seconds with one line; Ray itself retries for
    minutes, printing a warning every few seconds. `auto` and URLs (ray://) are left to Ray."""
    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"Ray address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UserError(f"Ray address {address}: nothing answers there ({err.strerror or err}); start the "
                        "head with `ray start --head` on that machine, or fix --address / RAY_ADDRESS") from None


class RayExecutor:
    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 dashboard: bool = False, temp_dir: str | None = None,
                 cache_root: Path | None = None, max_concurrent: int | None = None):
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = resolve_address(address)
        self.owns_cluster = address is None
        init_kwargs = dict(include_dashboard=dashboard, log_to_driver=False,
                           logging_level="ERROR", runtime_env={"env_vars": WORKER_ENV})
        if self.owns_cluster:
            init_kwargs.update(num_cpus=num_cpus or os.cpu_count(), _temp_dir=temp_dir)
        try:  # an address is checked with check_reachable by the caller, before its own set-up
            ray.init(address=address, **init_kwargs)
        except ConnectionError as err:  # e.g. `auto` with no cluster on this machine
            if self.owns_cluster:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"Ray address {address}: {first.rstrip('.')}; start one with `ray start "
                            "--head`, or leave --address and RAY_ADDRESS unset for a local Ray") from None
        self.ray = ray
        self.cache_root = str(cache_root) if cache_root else None
        self.max_concurrent = max_concurrent
        self._slot_class = ray.remote(max_restarts=0, max_concurrency=2)(RunSlot)
        self._idle: dict[tuple, list] = {}
        self._busy: dict[object, tuple] = {}  # object ref -> (slot key, actor or None)

    def fits(self, spec: RunSpec, running: list[RunSpec]) -> bool:
        from scaling.runner import fits_alongside

        return fits_alongside(self.ray.cluster_resources(), running, spec, self.max_concurrent)

    def check_schedulable(self, specs: list[RunSpec], sweep_file: str) -> None:
        """A run that asks for more than the whole cluster has would wait forever on a Ray of our
        own: one line naming it. A cluster we joined may grow (an autoscaler): a warning."""
        from scaling.runner import resource_need

        total = self.ray.cluster_resources()
        for spec in specs:
            need = resource_need(spec)
            if all(amount <= total.get(name, 0.0) + 1e-9 for name, amount in need.items()):
                continue
            res = spec.resources
            asked = ", ".join(f"{amount:g} {name}" for name, amount in need.items())
            has = ", ".join(f"{total.get(name, 0.0):g} {name}" for name in need)
            line = (f"{sweep_file}: run {spec.run_id} asks for {asked} ({res.workers} worker(s) x "
                    f"{res.cpus_per_worker:g} CPU, {res.gpus_per_worker:g} GPU) and this Ray has {has}")
            if self.owns_cluster:
                raise UserError(f"{line}; lower resources (or the tier that sets them), or join a "
                                "cluster that has them with --address")
            print(f"warning: {line}; it waits until nodes with them join", file=sys.stderr)
            return

    def submit(self, spec: RunSpec, run_dir: Path):
        res = spec.resources
        key = (res.cpus_per_worker, res.gpus_per_worker) if res.workers == 1 else None
        self._release_idle(keep=key)
        if key is None:
            from scaling.multiworker import submit_multiworker

            return submit_multiworker(self.ray, spec, run_dir, self.cache_root)
        idle = self._idle.setdefault(key, [])
        actor = idle.pop() if idle else self._slot_class.options(
            num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker).remote()
        ref = actor.run.remote(spec.to_json(), str(run_dir), self.cache_root)
        self._busy[ref] = (key, actor)
        return ref

    def _release_idle(self, keep: tuple | None) -> None:
        """Stop the idle slots of other shapes: they hold their CPUs and GPUs, which a run of
        another shape (resources.tiers; a multi-worker run) needs. A homogeneous sweep keeps its
        slots, and their fork servers, for the whole sweep."""
        stale = [actor for key, pool in self._idle.items() if key != keep for actor in pool]
        if not stale:
            return
        self.ray.wait([a.close.remote() for a in stale], num_returns=len(stale), timeout=30)
        for actor in stale:
            self.ray.kill(actor)
        self._idle = {key: pool for key, pool in self._idle.items() if key == keep}

    def wait(self, handles: list, timeout_s: float) -> list[tuple[object, Outcome]]:
        if not handles:
            return []
        ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=timeout_s)
        finished = []
        for handle in ready:
            outcome, slot_alive = self._outcome(handle)
            key, actor = self._busy.pop(handle, (None, None))
            if actor is not None and slot_alive:
                self._idle.setdefault(key, []).append(actor)
            finished.append((handle, outcome))
        return finished

    def _outcome(self, handle) -> tuple[Outcome, bool]:
        """How the run ended, and whether its slot (actor) is still usable."""
        from ray import exceptions as rex

        try:
            return Outcome(ok=True, summary=self.ray.get(handle)), True
        except rex.RayTaskError as exc:
            from scaling.forkserver import RunFailedError, WorkerDiedError

            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, WorkerDiedError):
                return Outcome(ok=False, error=str(cause), worker_died=True), True
            if isinstance(cause, RunFailedError):
                return Outcome(ok=False, error=str(cause), traceback=cause.traceback_text), True
            line, text = describe_exception(cause)
            return Outcome(ok=False, error=line, traceback=text), True
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ActorDiedError,
                rex.TaskCancelledError, rex.OutOfMemoryError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            error = f"worker process died ({type(exc).__name__}) {first}".strip()
            return Outcome(ok=False, error=error, worker_died=True), False

    def cancel(self, handles: list) -> None:
        """Stop runs in flight: kill their processes (the slot's abort), then the slots."""
        aborts = []
        for handle in handles:
            _, actor = self._busy.pop(handle, (None, None))
            if actor is not None:
                aborts.append(actor.abort.remote())
            else:
                try:
                    self.ray.cancel(handle, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
        if aborts:
            self.ray.wait(aborts, num_returns=len(aborts), timeout=30)

    def close(self) -> None:
        if not self.ray.is_initialized():
            return
        actors = [a for pool in self._idle.values() for a in pool]
        actors += [a for _, a in self._busy.values() if a is not None]
        if actors:
            self.ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=30)
        self._idle.clear()
        self._busy.clear()
        self.ray.shutdown()
