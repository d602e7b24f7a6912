"""`scaling train`: train one run in the foreground, with a progress bar.

    scaling train --spec outputs/demo/runs/<run_id>/spec.json      # the run directory is the spec's
    scaling train sweeps/demo.yaml --run-id <run_id>               # -> <output_dir>/<sweep>/runs/<id>
    scaling train sweeps/demo.yaml --run-id <run_id> --out /tmp/r  # anywhere else

The run trains in this process (DeepSpeed, one worker), resumes from the run directory's newest
checkpoint, and prints the result record's headline numbers. `python -m trainers.train` is the same
command, for subprocesses and tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train one run of a sweep in the foreground (DeepSpeed, resumable)",
        description="Train a single run, from its spec.json or from a sweep file and its run id,\n"
                    "in this process with a progress bar. The run directory gets metrics.jsonl,\n"
                    "checkpoints, the final model and result.json. Rerunning resumes from the\n"
                    "newest checkpoint; a finished run is not retrained. Run ids: `scaling plan`.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    add_train_arguments(p)
    p.set_defaults(func=run_train_command)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", nargs="?", default=None, help="sweep YAML file (with --run-id)")
    p.add_argument("--run-id", default=None, help="which run of the sweep to train (see `scaling plan`)")
    p.add_argument("--spec", default=None, help="a run's spec.json instead of sweep + --run-id")
    p.add_argument("--out", default=None,
                   help="run directory, a folder or a URL (default: the spec file's folder, or "
                        "<output_dir>/<sweep>/runs/<run_id> for a sweep)")
    p.add_argument("--cache-dir", default=None,
                   help="prepared-data cache (default: data.cache_dir, else the sweep's "
                        "<output_dir>/.cache, found from the spec's place in the run store, else "
                        "outputs/.cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_run(args: argparse.Namespace):
    """(RunSpec, run directory, cache root) from the arguments; UserError on bad arguments."""
    from scaling.errors import UserError
    from scaling.runspec import RunSpec
    from scaling.storage import location

    if args.spec and (args.sweep or args.run_id):
        raise UserError("give either --spec SPEC.json or SWEEP.yaml --run-id ID, not both")
    if args.spec:
        path = Path(args.spec)
        if not path.is_file():
            raise UserError(f"--spec: no such file {args.spec!r}; give a run's spec.json")
        try:
            spec = RunSpec.from_json(path.read_text())
        except ValueError as err:  # JSON or pydantic validation
            first = str(err).strip().splitlines()[0]
            raise UserError(f"--spec {args.spec}: not a valid run spec ({first})") from None
        cache = args.cache_dir or spec.data.cache_dir or _store_cache(path.resolve())
        return spec, location(args.out) if args.out else path.parent, Path(cache)
    if not (args.sweep and args.run_id):
        raise UserError("give a sweep file and --run-id ID (ids: `scaling plan SWEEP.yaml`), "
                        "or --spec SPEC.json")
    from scaling.run_cli import data_cache_root
    from scaling.store import RunStore
    from scaling.sweepfile import load_plan

    sweep, plan = load_plan(args.sweep)
    matches = [s for s in plan.runs if s.run_id == args.run_id]
    if not matches:
        near = [s.run_id for s in plan.runs if s.run_id.startswith(args.run_id)]
        hint = f"; did you mean {near[0]}?" if len(near) == 1 else "; list them with `scaling plan`"
        raise UserError(f"--run-id {args.run_id!r} is not a run of {args.sweep}{hint}")
    spec = matches[0]
    out = location(args.out) if args.out else RunStore(sweep.output_dir, sweep.name).run_dir(spec.run_id)
    return spec, out, Path(args.cache_dir) if args.cache_dir else data_cache_root(sweep)


def _store_cache(spec_path: Path) -> Path:
    """<output_dir>/.cache for a spec inside the run store (<output_dir>/<sweep>/runs/<id>/spec.json,
    scaling/store.py), so training it reuses the sweep's prepared data; else outputs/.cache."""
    parents = spec_path.parents
    if len(parents) > 3 and parents[1].name == "runs":
        return parents[3] / ".cache"
    return Path("outputs") / ".cache"


def run_train_command(args: argparse.Namespace) -> int:
    from scaling.errors import UserError
    from scaling.staging import drop_scratch, train_staged

    try:
        spec, run_dir, cache = resolve_run(args)  # run_dir may be a URL: trained through scratch
        result = train_staged(spec, run_dir, progress=not args.no_progress, cache_root=cache)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    drop_scratch(run_dir)  # a URL store's scratch: everything is in the store now
    if "train_loss" not in result:  # a worker other than rank 0 of a multi-worker run
        return 0
    print(f"{spec.run_id}: val_loss {result['val_loss']:.4f} nats/token "
          f"({result['val_bits_per_byte']:.4f} bits/byte), train_loss {result['train_loss']:.4f}, "
          f"{result['tokens_per_second']:.0f} tokens/s, setup {result['setup_seconds']:.1f}s; "
          f"{run_dir / 'result.json'}")
    return 0
