"""How long reading a sweep's run states takes from a run store on S3: one run at a time (what
`scaling status` did before RunStore.snapshot) against RunStore.snapshot (one listing, one batch of
concurrent reads), interleaved, with the S3 requests each makes.

    .venv/bin/python benchmarks/store_status.py [--runs 225] [--rounds 5] [--latency-ms 0]

Needs s3fs and moto's server (`pip install s3fs "moto[server]"`, which the project does not
install: README, "Running on a cluster"); it starts a local S3 server (moto) on loopback. A local
server answers in about a millisecond where S3 takes tens: --latency-ms adds a delay to every
request, so the figures can be read at S3's latency too. Prints `per_run_s`, `snapshot_s`,
`requests_per_run_path`, `requests_snapshot` and `ratio` (per-run time / snapshot time), medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def start_s3() -> None:
    import logging

    from moto.server import ThreadedMotoServer

    from trainers.dist import find_free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    port = find_free_port()
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)


def count_requests(latency_s: float) -> list[int]:
    """Count (and optionally slow down) every S3 API call s3fs makes."""
    import asyncio

    import s3fs

    counter = [0]
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        counter[0] += 1
        if latency_s:
            await asyncio.sleep(latency_s)
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counted
    return counter


def fill(store, n_runs: int) -> list[str]:
    """n_runs finished runs (status + result), a tenth of them with a checkpoint instead."""
    from scaling.store import write_atomic

    ids = [f"ar-C1e18-run{i:04d}" for i in range(n_runs)]
    for i, run_id in enumerate(ids):
        store.write_status(run_id, "succeeded" if i % 10 else "interrupted", attempts=1)
        if i % 10:
            write_atomic(store.run_dir(run_id) / "result.json",
                         json.dumps({"run_id": run_id, "val_loss": 3.0 + i / n_runs}))
        else:
            write_atomic(store.run_dir(run_id) / "checkpoints" / "latest.json", '{"step": 10}')
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=225)  # the paper sweep's
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    start_s3()
    from scaling.storage import location
    from scaling.store import RunStore

    location("s3://isoflop-bench").mkdir()
    store = RunStore("s3://isoflop-bench/studies", "paper")
    ids = fill(store, args.runs)
    requests = count_requests(args.latency_ms / 1000)

    def one_at_a_time():
        return {rid: (store.state(rid), store.read_result(rid)) for rid in ids}

    timings = {"per_run": [], "snapshot": []}
    counts = {}
    for _ in range(args.rounds):
        for name, read in (("per_run", one_at_a_time), ("snapshot", lambda: store.snapshot(ids))):
            before, started = requests[0], time.perf_counter()
            states = read()
            timings[name].append(time.perf_counter() - started)
            counts[name] = requests[0] - before
            assert len(states) == len(ids)
    assert one_at_a_time() == store.snapshot(ids)
    per_run, snapshot = (statistics.median(timings[k]) for k in ("per_run", "snapshot"))
    print(f"{args.runs} runs, {args.rounds} rounds interleaved, added latency {args.latency_ms:g} ms per request")
    print(f"per_run_s {per_run:.3f}")
    print(f"snapshot_s {snapshot:.3f}")
    print(f"requests_per_run_path {counts['per_run']}")
    print(f"requests_snapshot {counts['snapshot']}")
    print(f"ratio {per_run / snapshot:.1f}")


if __name__ == "__main__":
    main()
