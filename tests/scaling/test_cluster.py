"""Multi-worker runs on a real two-node Ray cluster, and how their failures reach the run store.

The cluster test starts two Ray nodes on this machine (`ray start --head` and a second `ray start`
joining it, 2 CPUs each, one session folder of their own) and trains, through `scaling run
--address`, a cut-down smoke sweep with `workers: 2, cpus_per_worker: 2`: each worker needs a whole
node, so the two ranks run on different nodes and their gloo group spans both. Rows and randomness
are seeded per global row (trainers/engine.py), so that run must train the same model as one
worker accumulating two micro-batches of the same size. A second run of the sweep fails on purpose
on every rank and must be recorded with the worker's one-line reason.

Why not `ray stop`: it stops every Ray process of the machine (it matches process names), including
other users' sessions; the cluster here is stopped by its own processes instead, in the order
`ray stop` uses (raylets, then the rest, then the GCS). Ray binds its servers to every interface
and resolves 127.0.0.1 to the host's address, so the cluster uses token authentication with a
token of its own (never ~/.ray/auth_token).
"""

from __future__ import annotations

import json
import re
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml

from tests.scaling.raysession import kill_all, poll_until, ray_processes

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE_CPUS = 2
STOP_GRACE_S = 10
# Process titles of what our runs start inside Ray; none may outlive the driver that started it.
RUN_PROCESS_MARKERS = ("RayTrainWorker", "TrainController", "RunSlot", "scaling.forkserver", "_fit")
# Two workers x one micro-batch of 4 vs one worker x two micro-batches of 4 see the same rows,
# times and masks; the gradient is (g0 + g1) / 2 either way (a sum of two fp32 terms is exact in
# either order, halving is exact), so the runs agree to the last bit (measured: 0.0). The bound is
# the one tests/trainers/test_train_e2e.py uses for the same identity under torchrun.
LOSS_ABS_TOL = 1e-5


# ---------------------------------------------------------------- processes of one Ray session


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def stop_session(temp_dir: str) -> None:
    """What `ray stop` does, for this session only: SIGTERM the raylets, then the other processes,
    then the GCS (raylets first so that their agents do not fail first; the GCS last so that
    nothing outlives it), each group with a grace period, then SIGKILL what is left of it."""
    procs = ray_processes(temp_dir)
    names = {proc.pid: _name(proc) for proc in procs}
    groups = [[p for p in procs if names[p.pid] == "raylet"],
              [p for p in procs if names[p.pid] not in ("raylet", "gcs_server")],
              [p for p in procs if names[p.pid] == "gcs_server"]]
    for group in groups:
        for proc in group:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(group, timeout=STOP_GRACE_S)
        kill_all(alive)


# ---------------------------------------------------------------- the cluster


@pytest.fixture
def cluster():
    """(address, env) of a two-node Ray cluster on this machine; stopped and checked afterwards."""
    from trainers.dist import find_free_port

    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths are limited
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))  # the format of `ray get-auth-token --generate`
    token.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    address = f"127.0.0.1:{find_free_port()}"
    common = [f"--num-cpus={NODE_CPUS}", f"--temp-dir={temp_dir}", "--object-store-memory=100000000",
              "--disable-usage-stats"]
    head = [str(BIN / "ray"), "start", "--head", f"--port={address.split(':')[1]}",
            "--include-dashboard=false", "--node-ip-address=127.0.0.1", *common]
    second = [str(BIN / "ray"), "start", f"--address={address}", '--resources={"node2": 1}', *common]
    try:
        for command in (head, second):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield address, env, temp_dir
    finally:
        stop_session(temp_dir)
        leftovers = ray_processes(temp_dir)
        kill_all(leftovers)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"Ray processes left behind: {[(p.pid, _name(p)) for p in leftovers]}"


def write_sweep(tmp_path: Path, name: str, *, workers: int, micro_batch_seqs: int | None,
                families: list[dict]) -> Path:
    """sweeps/smoke.yaml cut to one budget and one shape, with its own output and data cache."""
    raw = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    # 3.12e9 FLOPs: 60 steps of the d32 shape, 99.8% of the budget (the planner wants >= 99%).
    raw.update(name=name, output_dir=str(tmp_path / "out"), families=families, budgets=[3.12e9],
               max_retries=0)
    raw["ladder"]["shapes"] = [{"n_layers": 2, "d_model": 32, "n_heads": 2}]
    raw["selection"]["tokens_per_param"] = [0.01, 100]
    raw["data"]["cache_dir"] = str(tmp_path / "cache")  # shared: tokenized once for both sweeps
    raw["resources"] = {"workers": workers, "cpus_per_worker": NODE_CPUS}
    if micro_batch_seqs is not None:
        raw["recipe"]["micro_batch_seqs"] = micro_batch_seqs
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def scaling_run(path: Path, address: str, env: dict, extra_env: dict | None = None):
    return subprocess.run([str(BIN / "scaling"), "run", str(path), "--address", address,
                           "--no-progress"], env={**env, **(extra_env or {})}, capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def run_dir(root: Path, label: str) -> Path:
    (found,) = [p for p in (root / "runs").iterdir() if p.name.startswith(f"{label}-")]
    return found


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_leftovers(temp_dir: str) -> list[str]:
    """Titles of processes our runs started that are still alive."""
    titles = []
    for proc in ray_processes(temp_dir):
        try:
            title = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if any(marker in title for marker in RUN_PROCESS_MARKERS):
            titles.append(f"{proc.pid} {title[:80]}")
    return titles


@pytest.mark.cluster
def test_two_workers_on_two_nodes_equal_one_worker_accumulating(cluster, tmp_path):
    address, env, temp_dir = cluster
    mdlm = {"family": "mdlm", "label": "mdlm-lowvar", "options": {"objective": "low_var"}}
    two = write_sweep(tmp_path, "two", workers=2, micro_batch_seqs=None,
                      families=[mdlm, {"family": "ar", "label": "doomed"}])
    one = write_sweep(tmp_path, "one", workers=1, micro_batch_seqs=4, families=[mdlm])

    fault = "injected failure on every rank"
    ran = scaling_run(two, address, env, {"SCALING_FAULT_INJECT": f"doomed={fault}"})
    assert ran.returncode == 1, ran.stdout[-2000:] + ran.stderr[-3000:]
    root_two = tmp_path / "out" / "two"
    failed = run_dir(root_two, "doomed")
    assert f"failed: {failed.name}: RuntimeError: {fault}\n" in ran.stderr
    status = json.loads((failed / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == f"RuntimeError: {fault}"
    assert not status["worker_died"] and "scaling/worker.py" in status["traceback"]
    assert not (failed / "result.json").exists()

    ran = scaling_run(one, address, env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    gone = poll_until(lambda: not run_leftovers(temp_dir), timeout=30, poll=0.5)  # Ray ends a finished job's
    assert gone, f"run processes outlived their drivers: {run_leftovers(temp_dir)}"  # workers

    a = run_dir(root_two, "mdlm-lowvar")
    b = run_dir(tmp_path / "out" / "one", "mdlm-lowvar")
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert (ra["world_size"], ra["micro_batch_seqs"], ra["accumulation_steps"]) == (2, 4, 1)
    assert (rb["world_size"], rb["micro_batch_seqs"], rb["accumulation_steps"]) == (1, 4, 2)
    print(f"\nval_loss two workers {ra['val_loss']!r}, one worker {rb['val_loss']!r}")
    assert ra["val_loss"] == pytest.approx(rb["val_loss"], abs=LOSS_ABS_TOL)
    rows_a, rows_b = metrics(a), metrics(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]  # rank 0 alone writes
    diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(rows_a, rows_b))
    print(f"max |train loss difference| over {len(rows_a)} logged steps: {diff!r}")
    assert diff <= LOSS_ABS_TOL
    # Ray Train leaves nothing in the run store: the run folder holds what a one-worker run's does.
    # (besides the other ranks' own worker.<rank>.log / .pid)
    per_rank = re.compile(r"worker\.\d+\.(log|pid)$")
    assert sorted(p.name for p in a.iterdir() if not per_rank.match(p.name)) == sorted(
        p.name for p in b.iterdir())
    assert (a / "worker.1.log").exists() and (a / "worker.1.pid").exists()
    assert json.loads((a / "status.json").read_text())["state"] == "succeeded"


# ---------------------------------------------------------------- failure mapping (no cluster)


def test_worker_failure_becomes_the_workers_reason():
    from ray.train import WorkerGroupError

    from scaling.forkserver import RunFailedError
    from scaling.multiworker import run_failure

    sent = RunFailedError("RuntimeError: boom", "Traceback ...\nRuntimeError: boom\n")
    received = pickle.loads(pickle.dumps(sent))  # as Ray Train returns it from the worker
    assert received.traceback_text == sent.traceback_text
    other = RunFailedError("RuntimeError: Connection closed by peer", "")
    error = run_failure(WorkerGroupError("[Rank 0,1 Error Snippet] ...", {1: other, 0: received}))
    assert isinstance(error, RunFailedError) and str(error) == "RuntimeError: boom"
    assert error.traceback_text.endswith("RuntimeError: boom\n")


def test_dead_worker_and_controller_failures():
    from ray.exceptions import ActorDiedError
    from ray.train import ControllerError, WorkerGroupError

    from scaling.forkserver import RunFailedError, WorkerDiedError
    from scaling.multiworker import run_failure

    class HealthCheckFailed(Exception):  # the shape of Ray Train's internal wrapper
        def __init__(self, failure):
            super().__init__("A worker health check failed.")
            self.health_check_failure = failure

    died = run_failure(WorkerGroupError("...", {1: HealthCheckFailed(ActorDiedError())}))
    assert isinstance(died, WorkerDiedError)
    assert str(died) == "training worker of rank 1 died (A worker health check failed.)"
    plain = run_failure(WorkerGroupError("snippet", {0: ValueError("bad value")}))
    assert isinstance(plain, RunFailedError) and str(plain) == "rank 0: ValueError: bad value"
    controller = run_failure(ControllerError(RuntimeError("no placement")))
    assert str(controller) == "Ray Train controller: RuntimeError: no placement"
