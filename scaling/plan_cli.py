"""`scaling plan SWEEP.yaml`: the expanded grid, nothing started or written."""

from __future__ import annotations

import argparse


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
                   help="training throughput per GPU for the 113M shape used by --estimate "
                        "(default: the documented assumption in scaling/estimate.py)")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from scaling.plan import render_csv, render_json, render_table
    from scaling.sweepfile import load_plan

    sweep, plan = load_plan(args.sweep)
    render = {"csv": render_csv, "json": render_json}.get(args.format)
    print(render(plan) if render else render_table(plan, sweep.name), end="\n" if not render else "")
    if args.estimate:
        from scaling.estimate import render_estimate
        print(render_estimate(plan, args.tokens_per_second))
    return 0
