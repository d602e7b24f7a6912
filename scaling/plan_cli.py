"""`scaling plan SWEEP.yaml`: the expanded grid, nothing started or written."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="show the runs a sweep expands to (nothing is started)",
        description="Expand a sweep YAML into its runs: family, budget, shape, non-embedding "
                    "parameters N, tokens D, tokens/param, steps and achieved FLOPs/budget.")
    p.add_argument("sweep", help="sweep YAML file, e.g. sweeps/demo.yaml")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default, with totals), or one row per run as csv/json")
    p.add_argument("--estimate", action="store_true",
                   help="also estimate accelerator hours per family from a throughput")
    p.add_argument("--tokens-per-second", type=float, default=None,
                   help="training throughput per GPU for the 113M shape; implies --estimate "
                        "(default: the H100 figure measured in scaling/estimate.py)")
    p.add_argument("--gpus", type=int, default=None, metavar="G",
                   help="also estimate the sweep's wall-clock on a cluster of G GPUs, scheduled as "
                        "the runner does (longest first, ideal data parallelism); implies --estimate")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from scaling.errors import UserError
    from scaling.estimate import estimate_makespan, render_estimate, resolve_tokens_per_second
    from scaling.plan import render_csv, render_json, render_table
    from scaling.sweepfile import load_plan

    try:
        resolve_tokens_per_second(args.tokens_per_second)
    except ValueError as err:
        raise UserError(f"--tokens-per-second: {err}; give a measured throughput "
                        f"(benchmarks/gpu_check.sh prints one)") from None
    if args.gpus is not None and args.gpus < 1:
        raise UserError(f"--gpus: a cluster needs at least one GPU, got {args.gpus}; give the GPUs "
                        f"the sweep will run on, e.g. --gpus 64")
    sweep, plan = load_plan(args.sweep)
    makespan = None
    if args.gpus is not None:  # before any output: a run the cluster cannot hold prints nothing
        try:
            makespan = estimate_makespan(plan, args.gpus, args.tokens_per_second)
        except ValueError as err:
            raise UserError(f"--gpus {args.gpus}: {err}") from None
    render = {"csv": render_csv, "json": render_json}.get(args.format)
    print(render(plan) if render else render_table(plan, sweep.name), end="\n" if not render else "")
    if args.estimate or args.tokens_per_second is not None or makespan is not None:
        # beside csv/json on stderr, so the machine-readable output stays parseable in a pipe
        print(render_estimate(plan, args.tokens_per_second, makespan),
              file=sys.stderr if render else sys.stdout)
    return 0
