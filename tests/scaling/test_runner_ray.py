"""The sweep runner end to end against the real Ray and the real DeepSpeed: a normal sweep and its
idempotent rerun, kill -9 of a worker, kill -9 of the driver, an injected exception, Ctrl-C. Each
test gives Ray its own session folder and checks that no Ray process is left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.scaling.raysession import kill_all, poll_until, ray_processes

REPO = Path(__file__).resolve().parents[2]
SCALING = str(Path(sys.executable).parent / "scaling")


def alive(procs) -> list[psutil.Process]:
    found = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def is_fork_server(proc) -> bool:
    """A slot's fork server or a training process forked from it."""
    try:
        return "scaling.forkserver" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


@pytest.fixture
def sweep(tmp_path):
    """Smoke sweep cut to one budget (6 runs), its own output and Ray session folders."""
    raw = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    raw["budgets"] = [6e9]
    raw["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "smoke1.yaml"
    path.write_text(yaml.safe_dump(raw))
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    yield path, tmp_path / "out" / "smoke", ray_tmp
    leftovers = ray_processes(ray_tmp)
    kill_all(leftovers)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftovers, f"Ray processes left behind: {[p.pid for p in leftovers]}"


def _default_sigint() -> None:
    # A shell starting the tests in the background (`nohup make test &`, some CI runners) leaves
    # SIGINT ignored, and children inherit that: the driver must get Ctrl-C as a terminal sends it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(path, ray_tmp, env=None) -> subprocess.Popen:
    return subprocess.Popen([SCALING, "run", str(path), "--no-progress", "--ray-temp-dir", ray_tmp],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_default_sigint)


def finish(proc, timeout=600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def results(root: Path) -> dict[str, dict]:
    found = {}
    for path in (root / "runs").glob("*/result.json"):
        found[path.parent.name] = json.loads(path.read_text())  # also: no torn record
    return found


def wait_for(predicate, timeout=300, poll=0.2):
    value = poll_until(predicate, timeout, poll)
    if not value:
        raise TimeoutError("condition not met in time")
    return value


def test_sweep_then_idempotent_rerun(sweep):
    path, root, ray_tmp = sweep
    code, out, err = finish(start(path, ray_tmp))
    assert code == 0, err
    done = results(root)
    assert len(done) == 6
    import pandas as pd

    table = pd.read_parquet(root / "results.parquet")
    assert len(table) == 6 and table["val_loss"].notna().all()
    import torch  # where each run trained, beside its losses

    assert set(table["device"]) == {"cpu"} and set(table["precision"]) == {"fp32"}
    assert set(table["cpu_capability"]) == {torch.backends.cpu.get_cpu_capability()}
    assert not ray_processes(ray_tmp)  # a normal exit leaves no Ray process
    mtimes = {p: p.stat().st_mtime for p in root.glob("runs/*/result.json")}
    began = time.monotonic()
    code, out, err = finish(start(path, ray_tmp))
    assert code == 0 and "all 6 runs already succeeded" in out
    assert time.monotonic() - began < 60
    assert mtimes == {p: p.stat().st_mtime for p in root.glob("runs/*/result.json")}


def _running_run_with_checkpoint(root: Path):
    for run_dir in (root / "runs").glob("*"):
        # latest.json is written once a checkpoint is complete (trainers/checkpoint.py): a step
        # folder alone may be a save in progress, which a retry rightly ignores.
        pointer = run_dir / "checkpoints" / "latest.json"
        pid_file = run_dir / "worker.pid"
        if pointer.exists() and pid_file.exists() and not (run_dir / "result.json").exists():
            return run_dir, int(pid_file.read_text())
    return None


def test_kill_worker_mid_run_is_retried_and_succeeds(sweep):
    path, root, ray_tmp = sweep
    proc = start(path, ray_tmp)
    run_dir, pid = wait_for(lambda: _running_run_with_checkpoint(root))
    os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 0, err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and status["attempts"] == 2
    record = json.loads((run_dir / "result.json").read_text())
    assert record["resumed_from_step"] > 0  # the retry resumed from the checkpoint
    assert len(results(root)) == 6


def test_kill_driver_mid_sweep_then_rerun_completes(sweep):
    path, root, ray_tmp = sweep
    proc = start(path, ray_tmp)
    wait_for(lambda: len(list(root.glob("runs/*/result.json"))) >= 2)
    tree = ray_processes(ray_tmp)  # while the tree is whole: workers, fork servers, trainings
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    # A driver killed with -9 cannot stop its local Ray; Ray ends the dead job's workers, and with
    # them (parent-death signal) the fork servers and their training processes.
    wait_for(lambda: not [p for p in alive(tree) if is_fork_server(p)], timeout=60)
    kill_all(alive(tree) + ray_processes(ray_tmp))
    before = {p.parent.name: p.stat().st_mtime for p in root.glob("runs/*/result.json")}
    assert len(before) >= 2
    code, out, err = finish(start(path, ray_tmp))
    assert code == 0, err
    after = results(root)
    assert len(after) == 6
    for run_id, mtime in before.items():  # zero succeeded runs retrained
        assert (root / "runs" / run_id / "result.json").stat().st_mtime == mtime
    assert f"{6 - len(before)} trained, {len(before)} already done" in out
    for run_dir in (root / "runs").glob("*"):
        assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"


def test_injected_exception_fails_one_run_only(sweep):
    path, root, ray_tmp = sweep
    listing = subprocess.run([SCALING, "plan", str(path), "--format", "json"], capture_output=True,
                             text=True, check=True)
    victim = json.loads(listing.stdout)[2]["run_id"]
    proc = start(path, ray_tmp, env={"SCALING_FAULT_INJECT": f"{victim}=injected failure for the test"})
    code, out, err = finish(proc)
    assert code == 1
    assert f"failed: {victim}: RuntimeError: injected failure for the test" in err
    assert "to retry" in err
    status = json.loads((root / "runs" / victim / "status.json").read_text())
    assert status["state"] == "failed" and "injected failure for the test" in status["error"]
    assert "Traceback" in status["traceback"]
    done = results(root)
    assert len(done) == 5 and victim not in done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly(sweep, signum):
    """Ctrl-C, and SIGTERM as a batch scheduler or `kill` sends it (Ray's own SIGTERM handler
    aborted the driver, leaving its agents running and `running` records behind)."""
    path, root, ray_tmp = sweep
    proc = start(path, ray_tmp)
    wait_for(lambda: len(list(root.glob("runs/*/result.json"))) >= 1)
    proc.send_signal(signum)
    code, out, err = finish(proc, timeout=120)
    assert code == 130, err
    assert "rerun `scaling run" in err
    time.sleep(1)
    assert not ray_processes(ray_tmp)
    # Every run the driver started is settled: succeeded exactly when its record exists, else
    # interrupted (which runs were still in flight at the signal depends on timing).
    for status_path in root.glob("runs/*/status.json"):
        state = json.loads(status_path.read_text())["state"]
        has_result = (status_path.parent / "result.json").exists()
        assert state == ("succeeded" if has_result else "interrupted"), (status_path, state)


def _tiered(path: Path, resources: dict) -> None:
    """The sweep with AR alone (3 runs) and these resources."""
    raw = yaml.safe_load(path.read_text())
    raw["families"] = [{"family": "ar"}]
    raw["resources"] = {**raw["resources"], **resources}
    path.write_text(yaml.safe_dump(raw))


def test_runs_of_one_sweep_are_placed_by_their_own_resources(sweep):
    """resources.tiers: the largest models train on two workers (Ray Train, both CPUs of the local
    Ray), the others on one; a two-worker run never shares the machine with another run."""
    path, root, ray_tmp = sweep
    _tiered(path, {"tiers": [{"min_n_params": 1.4e5, "workers": 2}]})
    code, out, err = finish(start(path, ray_tmp))
    assert code == 0, err
    done = results(root)
    assert len(done) == 3
    workers = {r["spec"]["shape"]["d_model"]: r["world_size"] for r in done.values()}
    assert workers == {16: 1, 24: 1, 32: 2}
    spans = {run_id: json.loads((root / "runs" / run_id / "status.json").read_text())
             for run_id in done}
    for run_id, record in done.items():
        if record["world_size"] != 2:
            continue
        mine = spans[run_id]
        overlapping = [other for other, span in spans.items() if other != run_id
                       and span["started_at"] < mine["finished_at"] and mine["started_at"] < span["finished_at"]]
        assert not overlapping, f"{run_id} (2 workers, 2 CPUs) overlapped {overlapping}"
    assert not ray_processes(ray_tmp)


def test_a_run_larger_than_the_machine_is_one_line(sweep):
    """A run asking for a GPU on a Ray of our own without one would wait forever: refused in one
    line naming it, before anything trains, and Ray is shut down."""
    path, root, ray_tmp = sweep
    _tiered(path, {"tiers": [{"min_n_params": 1.4e5, "gpus_per_worker": 1}]})
    code, out, err = finish(start(path, ray_tmp))
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "asks for 1 CPU, 1 GPU (1 worker(s) x 1 CPU, 1 GPU) and this Ray has" in err
    assert "0 GPU; lower resources (or the tier that sets them)" in err
    assert not results(root) and not ray_processes(ray_tmp)
