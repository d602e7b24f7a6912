"""How fast is approach 3? The batched grid fit against a plain loop of scipy, same run, same data.

Data: Hoffmann et al.'s points as re-extracted by Besiroglu et al. (shared/data/chinchilla_epoch),
5 highest-loss points dropped (240 remain), the full 4,500-start grid. Each round times the
batched fit (analysis.parametric.fit_parametric) and, in the first --loop-rounds rounds, the
reference loop (one scipy.optimize.minimize L-BFGS-B with the analytic gradient per start); the
rounds interleave so both see the same machine load, and medians are reported. Then a
1,000-resample bootstrap. Prints `loop_s`, `fit_s`, `ratio`, `bootstrap_s` (median wall seconds),
the CPU seconds beside them (other jobs share the machine), both optima and how far apart they
are, and the bootstrap standard errors beside Besiroglu et al.'s. Targets: fit_s <= 2,
ratio >= 10, bootstrap_s <= 30.

    python benchmarks/fit_speed.py [--rounds 3] [--loop-rounds 1] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# scipy's L-BFGS-B core calls BLAS on its tiny (2m x 2m) matrices; with OpenBLAS's default
# threads on a loaded 2-core machine that made the reference loop 5-10x slower (setulb alone
# 1.3 ms per call instead of 5 us). One BLAS thread is the fair baseline, and it is set before
# numpy loads; export OPENBLAS_NUM_THREADS yourself to measure otherwise.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.bootstrap import bootstrap_parametric  # noqa: E402
from analysis.parametric import fit_parametric_grid, fit_parametric_loop  # noqa: E402

DATA = REPO / ".." / "shared" / "data" / "chinchilla_epoch" / "points.csv"
DROP_HIGHEST = 5  # Besiroglu et al. 2024 leave out the 5 highest-loss points
BESIROGLU_SE = dict(E=0.026, A=124.5, B=1293.0, alpha=0.015, beta=0.021)


def load():
    df = pd.read_csv(DATA)
    n, flops, loss = df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy(), df["loss"].to_numpy()
    return n, flops / (6 * n), loss  # D = C / 6N


def timed(fn, cpu_log=None):
    """Wall seconds and fn's result; appends the CPU seconds to cpu_log (the machine is shared)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if cpu_log is not None:
        cpu_log.append(time.process_time() - cpu)
    return time.perf_counter() - start, out


def describe(fit) -> str:
    return f"E={fit.E:.5f} A={fit.A:.3f} B={fit.B:.3f} alpha={fit.alpha:.5f} beta={fit.beta:.5f} objective={fit.objective:.12e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop-rounds", type=int, default=1, help="rounds that also time the (slow) loop")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"error: {DATA} not found (shared/ must sit beside the repo)", file=sys.stderr)
        return 2
    data = load()
    fit_times, loop_times, fit_cpu, loop_cpu, grid, loop = [], [], [], [], None, None
    for round_ in range(args.rounds):
        seconds, grid = timed(lambda: fit_parametric_grid(*data, drop_highest=DROP_HIGHEST), fit_cpu)
        fit_times.append(seconds)
        if round_ < args.loop_rounds:
            seconds, loop = timed(lambda: fit_parametric_loop(*data, drop_highest=DROP_HIGHEST), loop_cpu)
            loop_times.append(seconds)
        loop_note = f", loop {loop_times[-1]:.2f} s" if round_ < args.loop_rounds else ""
        print(f"round {round_}: fit {fit_times[-1]:.3f} s{loop_note}")
    boot_s, boot = timed(lambda: bootstrap_parametric(*data, grid, drop_highest=DROP_HIGHEST, n_resamples=args.resamples, rng=0))
    fit_s, loop_s = statistics.median(fit_times), statistics.median(loop_times)
    print(f"loop_s {loop_s:.3f}")
    print(f"fit_s {fit_s:.3f}")
    print(f"ratio {loop_s / fit_s:.1f}")
    print(f"bootstrap_s {boot_s:.3f}")
    print(f"fit_optimum  {describe(grid.fit)}")
    print(f"loop_optimum {describe(loop)}")
    rel = np.max(np.abs(grid.fit.params - loop.params) / np.abs(loop.params))
    print(f"max_rel_param_diff {rel:.2e}  objective_diff {grid.fit.objective - loop.objective:+.3e} (negative: batched lower)")
    print(f"bootstrap resamples {args.resamples}, failed {boot.n_failed}")
    print(f"cpu seconds (median): fit {statistics.median(fit_cpu):.3f}, loop {statistics.median(loop_cpu):.3f}; "
          f"blas_threads {os.environ.get('OPENBLAS_NUM_THREADS')}")
    for name, theirs in BESIROGLU_SE.items():
        print(f"bootstrap_se {name} {boot.se(name):.4g} (Besiroglu et al. {theirs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
