"""What the ranks of one node download when a run resumes from a store at a URL: the whole
checkpoint once per rank (how scaling/staging.py pulled before the node's shared copy) against once
per node (`staging.pull_checkpoint`: the first rank to take the lock downloads, the others find it
done). Every rank is a process of its own, all started together, as Ray Train starts them.

    .venv/bin/python benchmarks/checkpoint_pull.py [--ranks 8] [--mib 256] [--rounds 3]

The store is a file:// folder under a temporary directory, so the time is a local copy's; the
bytes are what an object store would serve. A synthetic checkpoint of --mib MiB in 4 files stands
in for DeepSpeed's (its size, not its contents, matters here). Prints `per_rank_s`, `per_node_s`,
`per_rank_mib`, `per_node_mib` (written on the node) and `ratio` (per-rank time / per-node time),
medians over interleaved rounds.
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
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TAG = "step00000050"
N_FILES = 4


def write_checkpoint(store: Path, mib: int) -> None:
    folder = store / "run" / "checkpoints" / TAG
    folder.mkdir(parents=True)
    for i in range(N_FILES):
        shard = folder / f"zero_pp_rank_{i}_mp_rank_00_optim_states.pt"
        shard.write_bytes(os.urandom((mib << 20) // N_FILES))
    (folder.parent / "latest.json").write_text(json.dumps({"tag": TAG, "step": 50}))


def per_rank(args: tuple[Path, Path, int]) -> None:
    from scaling.storage import location

    store, node, rank = args
    (location(f"file://{store}/run") / "checkpoints" / TAG).download(node / f"rank{rank}" / TAG)


def per_node(args: tuple[Path, Path, int]) -> None:
    from scaling.staging import pull_checkpoint
    from scaling.storage import location

    store, node, _ = args
    pull_checkpoint(location(f"file://{store}/run"), {"tag": TAG, "step": 50}, node / "run.checkpoint")


def timed(fn, store: Path, node: Path, ranks: int) -> tuple[float, float]:
    """(seconds until every rank has the checkpoint, MiB written on the node)."""
    from scaling.staging import folder_mib

    shutil.rmtree(node, ignore_errors=True)
    node.mkdir()
    with Pool(ranks) as pool:
        started = time.perf_counter()
        pool.map(fn, [(store, node, rank) for rank in range(ranks)])
        elapsed = time.perf_counter() - started
    return elapsed, folder_mib(node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, node = Path(tmp) / "store", Path(tmp) / "node"
        write_checkpoint(store, args.mib)
        rows: dict[str, list[tuple[float, float]]] = {"per_rank": [], "per_node": []}
        for _ in range(args.rounds):  # interleaved: the machine's noise falls on both alike
            rows["per_rank"].append(timed(per_rank, store, node, args.ranks))
            rows["per_node"].append(timed(per_node, store, node, args.ranks))
    seconds = {name: statistics.median(r[0] for r in runs) for name, runs in rows.items()}
    for name, runs in rows.items():
        print(f"{name}_s {seconds[name]:.3f}")
        print(f"{name}_mib {statistics.median(r[1] for r in runs):.0f}")
    print(f"ratio {seconds['per_rank'] / seconds['per_node']:.2f}")


if __name__ == "__main__":
    main()
