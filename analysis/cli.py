"""`scaling fit` and `scaling plot`: the analysis subcommands of the project's one console script.

scaling/cli.py calls register(subparsers); each subcommand sets func(args) -> exit status.
- fit: prints one line per group (or a JSON list with --json), writes fits/optima/multipliers as
  CSV + Markdown (+ fits.json) into --out, shows accepted edge vertices, boundary fits and
  left-out budgets as `warning:` lines and failed fits as `error:` lines on stderr. Exit 0 when
  every fit succeeded, 1 when some fit raised FitError (the rest are still reported and written).
- plot: fits the same way and writes the figures (PNG, PDF, SVG by default), printing their paths;
  of the fits' diagnostics it prints one line counting them (`fit` prints them; `make demo` runs
  both, one after the other). Same exit status as fit.
Anything the user got wrong (missing file, unknown column, bad --columns) raises UserError, which
the top-level CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from scaling.errors import UserError, writable_folder
from scaling.storage import location

# The fitting and plotting modules (scipy, pandas, matplotlib) load only when a subcommand runs,
# so `scaling --help` stays fast; these two lists mirror analysis.plots.FORMATS and
# analysis.bootstrap.BOOTSTRAP_METHODS (a test checks they agree).
FORMATS = ("png", "pdf", "svg")
BOOTSTRAP_METHODS = ("residuals", "cases")


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dirs", nargs="*", metavar="SWEEP",
                   help="sweep YAML files (their run stores, <output_dir>/<name>) or output directories holding "
                        "results.parquet (or results.csv), local or at a URL (s3://...); several are concatenated")
    p.add_argument("--csv", type=Path, help="a CSV of published runs instead of (or beside) sweep directories")
    p.add_argument("--columns", default=None,
                   help="map canonical columns (family, flops, n_params, tokens, loss) to the table's: "
                        'n_params="Model Size",flops="Training FLOP"')
    p.add_argument("--group-by", default=None, help="comma-separated columns; each group is fitted separately (default: family)")
    p.add_argument("--budget-tolerance", type=float, default=0.0, metavar="DEX",
                   help="runs whose log10 FLOPs lie within DEX share a budget (for published points with noisy FLOPs)")
    p.add_argument("--budgets", default=None, help="comma-separated nominal budgets to snap runs to (within --budget-tolerance)")
    p.add_argument("--drop-highest", type=int, default=0, metavar="K",
                   help="approach 3 leaves out the K highest-loss points per group")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--bootstrap-method", choices=BOOTSTRAP_METHODS, default="residuals",
                   help="approach 2: resample pooled parabola residuals (calibrated, default) or runs within budgets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accept-edge-vertex", action="store_true",
                   help="accept parabola vertices outside the sampled sizes (shown as warnings) instead of failing")
    p.add_argument("--drop-failed-budgets", action="store_true",
                   help="approach 2 leaves out the budgets whose parabola fails (each shown as a warning) and fits "
                        "the rest, when at least 2 remain, instead of failing the group")
    p.add_argument("--parabola-window", type=float, default=None, metavar="DEX",
                   help="approach 2 fits each budget's parabola to the runs within DEX decades of N of its "
                        "lowest-loss run (for grids much wider than the curve's minimum, e.g. 0.6)")
    p.add_argument("--accept-boundary-fit", action="store_true",
                   help="accept approach-3 fits whose optimum lies on the law's boundary (E collapsed to 0, or a "
                        "term that vanished or went flat over the runs; shown as warnings) instead of failing")
    p.add_argument("--huber", action="store_true", help="Huber-robust parabolas (approach 2)")
    p.add_argument("--reference", default=None, help="group the compute multipliers are measured against (default: the first)")
    p.add_argument("--out", default=None, help="output directory (a folder or a URL)")


def register(subparsers) -> None:
    """Add `fit` and `plot` to the project's argparse subparsers."""
    fit = subparsers.add_parser("fit", help="fit scaling laws (approaches 1-3) to sweep results or a CSV of runs")
    _add_inputs(fit)
    fit.add_argument("--json", action="store_true", help="print a JSON list, one object per group")
    fit.add_argument("--at", default=None, metavar="FLOPS",
                     help="comma-separated computes to answer for: each group's N*, D*, L* there, with intervals "
                          "(written to predictions.csv/.md), e.g. 1e21,1e22")
    fit.set_defaults(func=run_fit)
    plot = subparsers.add_parser("plot", help="write the iso-FLOP, frontier and residual figures")
    _add_inputs(plot)
    plot.add_argument("--formats", default=",".join(FORMATS), help="comma-separated figure formats (png,pdf,svg)")
    plot.set_defaults(func=run_plot)


def _options(args):
    from analysis.sweep import FitOptions

    if args.drop_highest < 0:
        raise UserError(f"--drop-highest must be >= 0, got {args.drop_highest}")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.parabola_window is not None and not args.parabola_window > 0:
        raise UserError(f"--parabola-window must be > 0 decades, got {args.parabola_window}")
    if args.budget_tolerance < 0:
        raise UserError(f"--budget-tolerance must be >= 0 (log10 units), got {args.budget_tolerance}")
    budgets = _numbers("--budgets", args.budgets, "6e18,1e19,3e19") or None
    group_by = tuple(c.strip() for c in args.group_by.split(",") if c.strip()) if args.group_by else None
    return FitOptions(
        group_by=group_by, drop_highest=args.drop_highest, n_bootstrap=args.bootstrap, seed=args.seed,
        bootstrap_method=args.bootstrap_method,
        accept_edge=args.accept_edge_vertex, accept_boundary=args.accept_boundary_fit, huber=args.huber,
        drop_failed_budgets=args.drop_failed_budgets, parabola_window_dex=args.parabola_window,
        budget_tolerance_dex=args.budget_tolerance, budgets=budgets, reference=args.reference,
    )


def _numbers(flag: str, text: str | None, example: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (empty when the flag was not given)."""
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"{flag}: {text!r} is not a comma-separated list of numbers, e.g. {example}") from exc


def _sweep_dirs(paths) -> list:
    """A sweep YAML stands for its run store, as in `scaling run` and `scaling status`; a run store
    may be a local folder or a URL (scaling/storage.py)."""
    from analysis.table import RESULT_FILES
    from scaling.sweepfile import load_sweep

    resolved = []
    for path in map(location, paths):
        if isinstance(path, Path) and path.suffix in (".yaml", ".yml") and path.is_file():
            sweep = load_sweep(path)
            store = location(sweep.output_dir) / sweep.name
            if not any((store / name).is_file() for name in RESULT_FILES):
                raise UserError(f"{path}: its run store {store} holds no results yet; run `scaling run {path}` first")
            path = store
        resolved.append(path)
    return resolved


def _fit(args, diagnostics: bool = True):
    """Load and fit; print the fits' warnings, errors and notes, or (diagnostics=False, for `plot`,
    which `make demo` runs right after `fit`) one line counting them."""
    from analysis.sweep import fit_sweep
    from analysis.table import load_runs, parse_columns

    options = _options(args)  # validate options before reading anything
    args.sweep_dirs = _sweep_dirs(args.sweep_dirs)  # resolved in place: --out defaults beside them
    df, notes = load_runs(args.sweep_dirs, args.csv, parse_columns(args.columns))
    if options.budgets:
        _check_budgets_have_runs(df["flops"], options)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    result = fit_sweep(df, options)
    if not diagnostics:
        if result.errors or result.warnings:
            counts = ", ".join(f"{len(lines)} {kind}{'' if len(lines) == 1 else 's'}" for kind, lines
                               in (("error", result.errors), ("warning", result.warnings)) if lines)
            print(f"note: the figures show what did fit ({counts}: `scaling fit` with the same "
                  f"arguments prints them)", file=sys.stderr)
        return result
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in result.errors:
        print(f"error: {line}", file=sys.stderr)
    for line in [n for g in result.groups for n in g.notes] + list(result.notes):
        print(f"note: {line}", file=sys.stderr)
    return result


def _check_budgets_have_runs(flops, options) -> None:
    """A --budgets entry that no run snaps to is a typo, not a finding about the runs."""
    import numpy as np

    from analysis.table import assign_budgets

    tolerance = options.budget_tolerance_dex
    snapped = assign_budgets(flops, tolerance_dex=tolerance, centres=options.budgets)
    missing = [b for b in options.budgets if not np.any(snapped == b)]
    if missing:
        present = sorted(set(assign_budgets(flops, tolerance_dex=tolerance)))
        raise UserError(f"--budgets: no run at {', '.join(f'{b:g}' for b in missing)} FLOPs (within "
                        f"--budget-tolerance {tolerance:g} dex); the table's runs are at "
                        f"{', '.join(f'{c:.3g}' for c in present)}")


def _default_out(args, leaf: str):
    if args.out is not None:
        return location(args.out)
    return (args.sweep_dirs[0] / leaf) if args.sweep_dirs else Path(leaf)


def _computes(text: str | None) -> tuple[float, ...]:
    values = _numbers("--at", text, "1e21,1e22")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--at: computes must be positive FLOPs, got {text}")
    return values


def run_fit(args) -> int:
    from analysis.report import json_records, summary_lines, write_tables

    at = _computes(args.at)  # checked before anything is read or fitted
    result = _fit(args)
    paths = write_tables(result, writable_folder(_default_out(args, "fits"), "--out"), at)
    if args.json:
        print(json.dumps(json_records(result, at), indent=1))
    else:
        print("\n".join(summary_lines(result, at)))
    print(f"wrote {len(paths)} files to {paths[0].parent}", file=sys.stderr if args.json else sys.stdout)
    return 1 if result.errors else 0


def run_plot(args) -> int:
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--formats: {', '.join(unknown) or 'none given'}; choose from {', '.join(FORMATS)}")
    from analysis.plots import make_figures

    result = _fit(args, diagnostics=False)
    for path in make_figures(result, writable_folder(_default_out(args, "figures"), "--out"), formats):
        print(path)
    return 1 if result.errors else 0
