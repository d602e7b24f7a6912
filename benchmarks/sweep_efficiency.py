"""Sweep scheduling efficiency and per-run overhead of the Ray runner, on a real sweep.

Runs a sweep (default: sweeps/smoke.yaml, 12 runs) from scratch in a temporary folder through the
product path (local Ray, fork-server slots, DeepSpeed), then reads the run records:

- efficiency = sum of per-run training seconds / (runner wall seconds x concurrent slots), where the
  runner wall runs from the first dispatch to the last completion (Ray start-up and data
  preparation are reported separately, not hidden in it);
- overhead_s = median per-run time that is not training or evaluation: the
  slot's view of the run (dispatch -> completion seen by the driver) minus those, i.e. Ray
  dispatch, process fork, DeepSpeed init, data load, saving the model and the records.

    .venv/bin/python benchmarks/sweep_efficiency.py [--sweep sweeps/demo.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default=str(REPO / "sweeps" / "smoke.yaml"))
    parser.add_argument("--keep", default=None, help="output folder to keep (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from scaling.executors import RayExecutor
    from scaling.runner import resource_need, run_sweep
    from scaling.store import RunStore
    from scaling.sweepfile import read_yaml, parse_sweep
    from scaling.grid import expand
    from trainers.data import prepare_data

    out = Path(args.keep or tempfile.mkdtemp(prefix="sweep_eff_"))
    raw = read_yaml(Path(args.sweep))
    raw["output_dir"] = str(out)
    sweep = parse_sweep(raw)
    specs = list(expand(sweep).runs)
    store = RunStore(out, sweep.name)
    cache = Path(sweep.output_dir) / ".cache"

    t0 = time.monotonic()
    prepare_data(sweep.data, sweep.recipe.seq_len, cache)
    t1 = time.monotonic()
    executor = RayExecutor(num_cpus=os.cpu_count(), cache_root=cache)
    t2 = time.monotonic()
    # concurrent runs the sweep can hold: its runs all ask for the same CPUs (no resources.tiers)
    slots = int(executor.ray.cluster_resources()["CPU"] // resource_need(specs[0])["CPU"])
    try:
        run_sweep(specs, store, executor)
    finally:
        executor.close()
    t3 = time.monotonic()

    train_s, overheads, setups = [], [], []
    first_start, last_end = float("inf"), 0.0
    for spec in specs:
        record = json.loads((store.run_dir(spec.run_id) / "result.json").read_text())
        status = json.loads((store.run_dir(spec.run_id) / "status.json").read_text())
        elapsed = status["finished_at"] - status["started_at"]
        busy = record["wall_seconds"] + record.get("eval_seconds", 0)
        train_s.append(record["wall_seconds"])
        overheads.append(elapsed - busy)
        setups.append(record["setup_seconds"])
        first_start = min(first_start, status["started_at"])
        last_end = max(last_end, status["finished_at"])
    runner_wall = last_end - first_start
    efficiency = sum(train_s) / (runner_wall * slots)
    print(f"sweep {sweep.name}: {len(specs)} runs on {slots} slots")
    print(f"data_prep_s {t1 - t0:.1f}")
    print(f"ray_start_s {t2 - t1:.1f}")
    print(f"runner_wall_s {runner_wall:.1f}")
    print(f"total_wall_s {t3 - t0:.1f}")
    print(f"train_s_sum {sum(train_s):.1f}")
    print(f"setup_s_median {statistics.median(setups):.2f}")
    print(f"efficiency {efficiency:.3f}")
    print(f"overhead_s {statistics.median(overheads):.2f}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
