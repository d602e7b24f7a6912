"""`scaling pareto`: sample the sweep's compute-optimal checkpoints and draw the speed/quality frontier.

    scaling pareto SWEEP.yaml [--runs RUN_ID ...] [--steps 4,8,16,32,64] [--judge PATH]
                              [--n-samples 64] [--seq-len L] [--seed 0] [--repeats 3]
                              [--threads N] [--device D] [--out DIR]

Checkpoints: by default one per family (label) of the results table, chosen by
analysis/pareto_frontier.select_compute_optimal (at the family's largest budget, the trained run
nearest the iso-FLOP parabola's vertex, else the lowest validation loss there); `--runs` names
them instead. Each is sampled at every step count (AR: once, L - 1 steps) and in every cache mode its
sampler has (trainers/samplers), and measured by trainers/pareto.py. The judge defaults to the
sweep's strongest AR checkpoint (lowest val_loss over all its AR runs).

Writes into <out>/<sweep>/ (out defaults to the sweep's output_dir): pareto.parquet (one row per
checkpoint x steps x cache), pareto.png/.pdf/.svg, samples.md; prints the table and which family
dominates each throughput range. torch is imported inside the command, so `scaling --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaling.errors import UserError, writable_folder

DEFAULT_STEPS = "4,8,16,32,64"
# The per-sample spread of log gen-PPL is ~0.45 on the demo models, so its standard error is ~0.06
# at 64 samples (0.11 at 16): enough for the fitted trend over step counts to stand out; pass
# --n-samples 256 to compare neighbouring step counts (~0.03).
DEFAULT_N_SAMPLES = 64
DEFAULT_REPEATS = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pareto", help="sample compute-optimal checkpoints; gen-PPL against throughput per family",
        description="Sample each family's compute-optimal checkpoint (or the --runs named) at several "
                    "step counts, with and without its cache, and measure throughput, gen-PPL under a "
                    "judge and unigram entropy. Writes <out>/<sweep>/pareto.parquet, the Pareto figure "
                    "(pareto.png/.pdf/.svg) and samples.md.")
    p.add_argument("sweep", help="sweep YAML file (its runs must be trained: `scaling run SWEEP`)")
    p.add_argument("--runs", nargs="+", default=None, metavar="RUN_ID",
                   help="checkpoints to sample (default: the compute-optimal run of each family)")
    p.add_argument("--steps", default=DEFAULT_STEPS,
                   help=f"comma-separated diffusion step counts (default {DEFAULT_STEPS}; AR ignores them)")
    p.add_argument("--judge", default=None, metavar="PATH",
                   help="local causal LM folder (transformers) or AR run folder scoring the samples "
                        "(default: the sweep's lowest-val_loss AR run)")
    p.add_argument("--n-samples", type=int, default=DEFAULT_N_SAMPLES, help=f"samples per configuration (default {DEFAULT_N_SAMPLES})")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default: the sweep's seq_len)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every configuration")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help=f"timings per configuration, median kept (default {DEFAULT_REPEATS})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: every family is timed alike, and more threads on "
                        "a busy machine make timings erratic; 0 keeps torch's default)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--out", type=Path, default=None, help="output root (default: the sweep's output_dir)")
    p.set_defaults(func=run_pareto)


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--steps: {text!r} is not a comma-separated list of integers, "
                        "e.g. 4,8,16,32,64") from None
    if not steps or steps[0] < 1:
        raise UserError(f"--steps: {text!r}; give step counts >= 1, e.g. 4,8,16,32,64")
    return steps


def read_results(store):
    """The sweep's results table; UserError when `scaling run` has not written it yet."""
    from analysis.table import read_table

    path = store.root / "results.parquet"
    if not path.is_file():
        raise UserError(f"{path}: no results table yet; run `scaling run SWEEP` first")
    return read_table(path)


def choose_runs(args, store, results) -> list[tuple[str, str]]:
    """(run_id, how it was chosen) of the checkpoints to sample."""
    from analysis.pareto_frontier import select_compute_optimal

    if args.runs:
        known = set(store.known_run_ids())
        for run_id in args.runs:
            if run_id not in known:
                raise UserError(f"--runs: unknown run id {run_id!r} in {store.runs_dir}; "
                                "`scaling status SWEEP` lists the sweep's runs")
        return [(run_id, "named with --runs") for run_id in dict.fromkeys(args.runs)]
    chosen = select_compute_optimal(results)
    if chosen.empty:
        raise UserError(f"{store.root / 'results.parquet'}: no run with a finite val_loss to sample")
    return list(zip(chosen["run_id"], chosen["selected_by"]))


def default_judge_dir(store, results) -> Path:
    from scaling.staging import fetch_run

    ar = results[(results["family_name"] == "ar") & results["val_loss"].notna()]
    if ar.empty:
        raise UserError("no trained AR run in the sweep to judge the samples with; pass --judge PATH "
                        "(a local transformers causal LM folder)")
    return fetch_run(store.run_dir(ar.loc[ar["val_loss"].idxmin(), "run_id"]))


def run_pareto(args: argparse.Namespace) -> int:
    from scaling.staging import fetch_run
    from scaling.storage import location
    from scaling.store import RunStore, parquet_bytes, write_atomic
    from scaling.sweepfile import load_sweep

    steps = parse_steps(args.steps)
    for flag, value, least in (("--n-samples", args.n_samples, 1), ("--repeats", args.repeats, 1),
                               ("--threads", args.threads, 0)):
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    sweep = load_sweep(args.sweep)
    seq_len = args.seq_len or sweep.recipe.seq_len
    if seq_len < 2:
        raise UserError(f"--seq-len must be >= 2 (a start token and one generated token), got {seq_len}")
    store = RunStore(sweep.output_dir, sweep.name)
    need_table = not args.runs or args.judge is None
    results = read_results(store) if need_table else None
    if args.judge is not None and not Path(args.judge).expanduser().exists():
        raise UserError(f"--judge: no such folder {args.judge!r}; give a local transformers causal LM folder")
    chosen = choose_runs(args, store, results)
    judge_path = Path(args.judge) if args.judge is not None else default_judge_dir(store, results)
    out = writable_folder(location(args.out if args.out is not None else sweep.output_dir) / sweep.name,
                          "--out" if args.out is not None else "output_dir")  # before minutes of sampling

    import torch
    from transformers.utils import logging as hf_logging

    from analysis.pareto_frontier import dominance_ranges, step_trends, write_pareto_figure
    from trainers import pareto

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint buries the table
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    judge = pareto.load_judge(judge_path, device)
    print(f"[{sweep.name}] judge: {judge.name}; {len(chosen)} checkpoints, steps {steps}, "
          f"{args.n_samples} samples of {seq_len} tokens on {device}")
    runs = []
    for run_id, how in chosen:
        print(f"  {run_id}: {how}")
        runs.append(pareto.load_run(fetch_run(store.run_dir(run_id)), run_id, device))
    table, samples = pareto.measure_runs(runs, judge, steps, n_samples=args.n_samples, seq_len=seq_len,
                                         seed=args.seed, device=device, repeats=args.repeats)
    write_atomic(out / "pareto.parquet", parquet_bytes(table))  # out may be a URL (scaling/storage.py)
    (out / "samples.md").write_text(pareto.samples_markdown(runs, table, samples))
    # one curve per family; per run when --runs names several checkpoints of one family
    group = "family" if table.groupby("family")["run_id"].nunique().max() == 1 else "run_id"
    figures = write_pareto_figure(table, out, group=group)
    trends = step_trends(table, group=group)
    (out / "pareto_trends.csv").write_text(trends.to_csv(index=False))
    print_summary(table, dominance_ranges(table, group=group), group)
    print_trends(trends, group)
    for path in [out / "pareto.parquet", out / "pareto_trends.csv", *figures, out / "samples.md"]:
        print(f"wrote {path}")
    return 0


def resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: {name!r} is not a torch device; e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def print_summary(table, ranges, group: str = "family") -> None:
    columns = ["family"] + (["run_id"] if group == "run_id" else []) + [
        "n_steps", "use_cache", "tokens_per_second", "gen_ppl", "gen_ppl_log_se", "entropy_mean",
        "entropy_min", "n_model_calls"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    print(f"dominant {'family' if group == 'family' else 'checkpoint'} per throughput range (tokens/s):")
    for _, r in ranges.iterrows():
        print(f"  ({r['throughput_min']:,.0f}, {r['throughput_max']:,.0f}]  {r[group]}  "
              f"gen-PPL {r['gen_ppl_best']:.2f} .. {r['gen_ppl_worst']:.2f}")


def print_trends(trends, group: str = "family") -> None:
    """One line per family and cache mode: does gen-PPL fall with more steps, beyond the noise?"""
    if trends.empty:
        return
    print("gen-PPL against sampling steps (slope of log gen-PPL per doubling of steps, +- 1 s.e.):")
    for _, r in trends.iterrows():
        verdict = "falls" if r["falls"] else ("rises" if r["slope_per_doubling"] - 2 * r["slope_se"] > 0
                                              else "no clear trend")
        print(f"  {r[group]:<14} cache {'on ' if r['use_cache'] else 'off'}: "
              f"{r['slope_per_doubling']:+.3f} +- {r['slope_se']:.3f} over {r['n_points']} step counts: {verdict}")
