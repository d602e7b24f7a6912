"""`scaling run` (train a sweep on Ray) and `scaling status` (the run store, no Ray)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="train every run of a sweep on Ray + DeepSpeed (resumable)",
        description="Train the sweep's grid. Succeeded runs are skipped, interrupted ones resume "
                    "from their checkpoints, failed ones are retried up to max_retries. With no "
                    "--address a local Ray is started (all CPUs) and stopped on exit.")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster ('auto' or HOST:PORT; default: $RAY_ADDRESS "
                        "or a local Ray started for this command)")
    p.add_argument("--dry-run", action="store_true",
                   help="list each run as run / resume / retry / skip with the reason; start nothing")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many runs at once (default: as many as the resources allow)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (local Ray)")
    p.add_argument("--ray-temp-dir", default=None, help="session folder of the local Ray")
    p.add_argument("--no-progress", action="store_true", help="print events as lines, no live display")
    p.set_defaults(func=run_run)

    s = sub.add_parser(
        "status", help="the run store of a sweep as a table (does not start Ray)",
        description="For each run of the sweep's plan: state, attempts, validation loss, wall "
                    "time and the last error; plus totals.")
    s.add_argument("sweep", help="sweep YAML file")
    s.add_argument("--format", choices=("table", "csv"), default="table")
    s.set_defaults(func=run_status)


def data_cache_root(sweep) -> Path:
    """Prepared data: data.cache_dir, else <output_dir>/.cache, else (a run store at a URL) this
    machine's cache, which each node of a cluster keeps for itself (scaling/staging.py)."""
    from scaling.staging import default_data_cache
    from scaling.storage import is_url

    if sweep.data.cache_dir:
        return Path(sweep.data.cache_dir)
    return default_data_cache() if is_url(sweep.output_dir) else Path(sweep.output_dir) / ".cache"


def workers_data_cache_root(sweep) -> Path | None:
    """What the workers are told: None lets each node of a URL store pick its own local cache."""
    from scaling.storage import is_url

    return None if is_url(sweep.output_dir) and not sweep.data.cache_dir else data_cache_root(sweep)


def print_decisions(decisions) -> None:
    width = max(len(d.spec.run_id) for d in decisions)
    for d in decisions:
        print(f"{d.action:<7} {d.spec.run_id:<{width}}  {d.reason}")
    counts = {a: sum(d.action == a for d in decisions) for a in ("run", "resume", "retry", "skip")}
    print("would " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def check_counts(args: argparse.Namespace) -> None:
    """--max-concurrent 0 would read as "no limit" and --num-cpus 0 as a Ray that never schedules a
    run: both are refused before anything starts."""
    from scaling.errors import UserError

    for flag, value in (("--max-concurrent", args.max_concurrent), ("--num-cpus", args.num_cpus)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}; leave it out for the default")


def run_run(args: argparse.Namespace) -> int:
    from scaling.errors import writable_folder
    from scaling.runner import plan_actions
    from scaling.store import RunStore
    from scaling.sweepfile import load_plan

    check_counts(args)
    if not args.dry_run:
        from scaling.executors import check_reachable, resolve_address

        if (address := resolve_address(args.address)) is not None:
            check_reachable(address)  # in seconds, before the data is tokenized
    sweep, plan = load_plan(args.sweep)
    specs = list(plan.runs)
    store = RunStore(sweep.output_dir, sweep.name)
    decisions = plan_actions(store, specs)
    if args.dry_run:
        print_decisions(decisions)
        return 0
    with store.driving():
        if not any(d.action != "skip" for d in decisions):
            store.rebuild_results(specs)
            print(f"[{sweep.name}] all {len(specs)} runs already succeeded; results: "
                  f"{store.root / 'results.parquet'}")
            return 0
        from trainers.data import prepare_data  # tokenize once here, before any worker starts

        writable_folder(data_cache_root(sweep), f"{args.sweep}: data.cache_dir" if sweep.data.cache_dir
                        else f"{args.sweep}: output_dir")
        started = time.monotonic()
        prepare_data(sweep.data, sweep.recipe.seq_len, data_cache_root(sweep))
        outcome = _run_on_ray(args, sweep, specs, store,
                              todo=[d.spec for d in decisions if d.action != "skip"])
    wall = time.monotonic() - started
    print(f"[{sweep.name}] {len(outcome.succeeded)} trained, {len(outcome.skipped)} already done, "
          f"{len(outcome.failed)} failed in {wall:.0f}s; results: {store.root / 'results.parquet'}")
    if outcome.failed:
        for run_id, error in outcome.failed.items():
            print(f"failed: {run_id}: {error}", file=sys.stderr)
        print(f"to retry: fix the cause, then rerun `scaling run {args.sweep}` (succeeded runs are "
              f"kept; details in {store.runs_dir}/<run_id>/status.json and worker.log)", file=sys.stderr)
        return 1
    return 0


def _run_on_ray(args, sweep, specs, store, todo):
    from scaling.executors import RayExecutor
    from scaling.progress import SweepProgress
    from scaling.runner import run_sweep

    executor = RayExecutor(args.address, num_cpus=args.num_cpus, dashboard=args.dashboard,
                           temp_dir=args.ray_temp_dir, cache_root=workers_data_cache_root(sweep),
                           max_concurrent=args.max_concurrent)
    try:
        executor.check_schedulable(todo, args.sweep)
    except BaseException:
        executor.close()
        raise
    progress = SweepProgress(sweep.name, live=False if args.no_progress else None)
    previous = _sigterm_as_interrupt()
    try:
        return run_sweep(specs, store, executor, progress=progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun `scaling run {args.sweep}` to resume", file=sys.stderr)
        raise
    finally:
        progress.close()
        executor.close()
        signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt():
    """SIGTERM (`kill`, a batch scheduler stopping the job) ends the sweep as Ctrl-C does: active
    runs are marked interrupted, Ray is shut down, nothing is left running. Installed after
    ray.init, whose own handler aborted the driver and left Ray's agents and stale `running`
    records behind. Returns the handler it replaced."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def run_status(args: argparse.Namespace) -> int:
    from scaling.store import RunStore
    from scaling.sweepfile import load_plan

    sweep, plan = load_plan(args.sweep)
    store = RunStore(sweep.output_dir, sweep.name)
    seen = _see_driver(store)
    rows = []
    snapshot = store.snapshot([spec.run_id for spec in plan.runs])
    for spec in plan.runs:
        state, result = snapshot[spec.run_id]
        result = result or {}
        val = result.get("val_loss")
        wall = result.get("wall_seconds")
        rows.append((spec.label, f"{spec.flops_budget:.3g}", spec.shape.tag, seen.shown(state.state),
                     str(state.attempts), f"{val:.4f}" if val is not None else "-",
                     f"{wall:.0f}" if wall is not None else "-", spec.run_id,
                     (state.error or "")[:60]))
    header = ("family", "budget", "shape", "state", "tries", "val_loss", "wall_s", "run_id", "error")
    if args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
        return 0
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    for row in rows:
        print(fmt.format(*row))
    counts = {}
    for row in rows:
        counts[row[3]] = counts.get(row[3], 0) + 1
    orphans = set(store.known_run_ids()) - {s.run_id for s in plan.runs}
    print(f"\n{len(rows)} runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + (f"; {len(orphans)} other run folders not in this plan" if orphans else ""))
    if seen.driver is not None:
        print(f"driven now by {seen.driver}")
    elif seen.lock_problem:
        print(f"cannot tell whether a `scaling run` drives this sweep now: {seen.lock_problem}")
    elif seen.unsure:
        print(f"the store's lease names a driver, {seen.unsure}: it died, or its machine's clock "
              f"differs from this one's; `scaling run {args.sweep}` watches the lease for 60 s and "
              "takes over only if nobody renews it")
    elif counts.get("interrupted"):
        print(f"no driver: rerun `scaling run {args.sweep}` to resume the interrupted runs")
    return 0


@dataclass(frozen=True)
class DriverSeen:
    """What `scaling status` can tell about the sweep's driver: who holds it (driver); else the
    store's lease record when it looks lapsed by this machine's clock (unsure); or, where the
    driver lock cannot tell (a filesystem without locks, or with locks per machine and the last
    driver on another one), why (lock_problem)."""

    driver: str | None
    unsure: str | None = None
    lock_problem: str | None = None

    def shown(self, state: str) -> str:
        """A run's state as status shows it. "running" with no driver holding the sweep: its
        driver died mid-run (kill -9, a crash); with an unsure lease record, perhaps it did,
        perhaps its clock is off; with no locks to ask, nobody can tell."""
        if state != "running" or self.driver is not None:
            return state
        if self.lock_problem:
            return "running?"
        return "interrupted?" if self.unsure else "interrupted"


def _see_driver(store) -> DriverSeen:
    from scaling.locks import NoLocksError

    try:
        driver = store.driver()
    except NoLocksError as err:  # status only reads: the table is still worth showing
        return DriverSeen(None, lock_problem=str(err))
    if driver is None and (elsewhere := store.driver_elsewhere()):
        return DriverSeen(None, lock_problem=elsewhere)
    return DriverSeen(driver, store.unsure_driver() if driver is None else None)
