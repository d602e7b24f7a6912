"""What runs inside a worker process for one run: set the process up, train, return a summary.

Kept free of Ray so the same function serves the Ray executor and the local (subprocess) one.
Fault injection for the fault-tolerance tests: SCALING_FAULT_INJECT="<run_id substring>=<message>"
makes a matching run raise RuntimeError(message) before training. It is read here, at the edge,
and nowhere in the trainers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

FAULT_ENV = "SCALING_FAULT_INJECT"


def _injected_fault(run_id: str) -> str | None:
    rule = os.environ.get(FAULT_ENV, "")
    if "=" not in rule:
        return None
    pattern, message = rule.split("=", 1)
    return message if pattern and pattern in run_id else None


def execute_run(spec_json: str, run_dir: str, cache_root: str | None = None) -> dict:
    """Train one run in this process; its output goes to run_dir/worker.log (for a run store at a
    URL, to the node-local scratch folder: scaling/staging.py). Raises on failure."""
    dispatched = time.time()
    from scaling.runspec import RunSpec
    from scaling.staging import scratch_dir, worker_file

    spec = RunSpec.from_json(spec_json)
    run_path = scratch_dir(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))  # one pid file and log per rank under Ray Train
    (run_path / worker_file(rank, "pid")).write_text(f"{os.getpid()}\n")  # lets tests and operators find it
    threads = max(1, int(spec.resources.cpus_per_worker))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if spec.resources.gpus_per_worker == 0 else "cuda")
    log = open(run_path / worker_file(rank, "log"), "a", buffering=1)
    # One log holds every attempt of the run (a URL store's, from every node): say where each begins.
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} attempt of {spec.run_id} on "
              f"{socket.gethostname()}, pid {os.getpid()}" + (f", rank {rank}" if rank else "") + "\n")
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        message = _injected_fault(spec.run_id)
        if message:
            raise RuntimeError(message)
        from scaling.staging import train_staged

        result = train_staged(spec, run_dir, progress=False,
                              cache_root=Path(cache_root) if cache_root else None)
    log.close()
    return {"run_id": spec.run_id, "pid": os.getpid(), "dispatched_at": dispatched,
            "val_loss": result.get("val_loss"), "wall_seconds": result.get("wall_seconds"),
            "setup_seconds": result.get("setup_seconds")}


if __name__ == "__main__":  # python -m scaling.worker SPEC_JSON_PATH RUN_DIR [CACHE_ROOT]
    summary = execute_run(Path(sys.argv[1]).read_text(), sys.argv[2],
                          sys.argv[3] if len(sys.argv) > 3 else None)
    print(summary)
