"""A run store at an fsspec URL (scaling/storage.py, scaling/staging.py).

The pure logic runs on fsspec's in-memory filesystem and on file:// URLs (the local filesystem
through fsspec's code path); the end-to-end test runs the smoke sweep with the real Ray and the
real DeepSpeed into a file:// store, kills a worker, and checks that its retry resumed from the
checkpoint in the store, that the result equals a run trained into a local folder, and that the
rerun, `scaling status` and `scaling fit` work on the URL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scaling.errors import UserError
from scaling.storage import RemotePath, is_url, location
from scaling.store import RunStore, write_atomic
from tests.scaling.test_runner_ray import REPO, SCALING, finish, wait_for


@pytest.fixture
def memory_root():
    root = f"memory://isoflop-test-{uuid.uuid4().hex[:8]}"  # the memory filesystem is process-wide
    yield root
    location(root).rmtree()


def _record(run_id: str, val_loss: float) -> dict:
    spec = {"label": "ar", "family": "ar", "flops_budget": 1e10, "options": {},
            "shape": {"n_layers": 2, "d_model": 16, "n_heads": 2}}
    return {"run_id": run_id, "spec": spec, "val_loss": val_loss, "n_params": 1000, "n_tokens": 10_000}


def test_locations_keep_local_paths_local():
    assert location("outputs") == Path("outputs") and not is_url("outputs")
    assert not is_url("C:/data")  # a Windows drive is not a scheme
    assert str(location("file:///tmp/x/")) == "file:///tmp/x"
    assert str(location("memory://b/p") / "runs" / "r1") == "memory:///b/p/runs/r1"


def test_a_store_at_a_url_keeps_the_run_store_contract(memory_root):
    store = RunStore(memory_root, "demo")
    assert isinstance(store.root, RemotePath) and store.known_run_ids() == []
    store.write_status("r1", "running", attempts=1)
    store.write_status("r2", "failed", attempts=2, error="boom")
    assert store.read_status("r1")["state"] == "running" and store.known_run_ids() == ["r1", "r2"]
    assert not store.has_checkpoint("r1")
    (store.run_dir("r1") / "checkpoints" / "step00000010" / "shard.pt").write_bytes(b"x")
    assert store.state("r1").has_checkpoint
    # the record decides "done", whatever the status says (the driver may have died in between)
    (store.run_dir("r1") / "result.json").write_text(json.dumps(_record("r1", 3.5)))
    assert store.state("r1").state == "succeeded" and store.state("r2").state == "failed"
    # each record is written whole: no temporary objects beside it
    assert sorted(p.name for p in store.run_dir("r1").iterdir()) == ["checkpoints", "result.json", "status.json"]

    class Spec:  # rebuild_results needs only run ids
        def __init__(self, run_id):
            self.run_id = run_id

    parquet = store.rebuild_results([Spec("r1"), Spec("r2")])
    assert str(parquet) == f"{store.root}/results.parquet"
    from analysis.table import read_table

    table = read_table(str(store.root))
    assert list(table["run_id"]) == ["r1"] and table["val_loss"].iloc[0] == 3.5


def test_a_driver_lock_for_a_url_lives_on_this_machine(memory_root, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    store = RunStore(memory_root, "demo")
    assert store.lock_file.is_relative_to(tmp_path / "xdg")
    with store.driving():
        assert store.driver().startswith(f"pid {os.getpid()} ")
        with pytest.raises(UserError, match="another `scaling run` is driving this sweep"):
            with RunStore(memory_root, "demo").driving():
                pass
    assert store.driver() is None


@pytest.mark.parametrize("where", ["memory", "local"])
def test_a_snapshot_reads_the_same_states_as_one_run_at_a_time(memory_root, tmp_path, where):
    """RunStore.snapshot (one listing and one batch of reads at a URL) against RunStore.state."""
    store = RunStore(memory_root if where == "memory" else tmp_path, "demo")
    store.write_status("done", "succeeded", attempts=1)
    write_atomic(store.run_dir("done") / "result.json", json.dumps(_record("done", 3.5)))
    store.write_status("failed", "failed", attempts=2, error="boom")
    store.write_status("resumable", "interrupted", attempts=1)
    write_atomic(store.run_dir("resumable") / "checkpoints" / "step00000010" / "shard.pt", b"x")
    store.write_status("torn", "succeeded", attempts=1)
    write_atomic(store.run_dir("torn") / "result.json", '{"val_loss": 3.')  # a success without its record
    ids = ["done", "failed", "resumable", "torn", "never-started"]
    snapshot = store.snapshot(ids)
    assert {rid: snapshot[rid][0] for rid in ids} == {rid: store.state(rid) for rid in ids}
    assert [snapshot[rid][0].state for rid in ids] == ["succeeded", "failed", "interrupted", "failed", "pending"]
    assert snapshot["resumable"][0].has_checkpoint and snapshot["failed"][0].error == "boom"
    assert snapshot["done"][1]["val_loss"] == 3.5 and snapshot["torn"][1] is None


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_a_missing_backend_is_one_line_naming_the_package():
    with pytest.raises(UserError, match=r"s3://bucket/studies: the s3:// protocol needs a package .*s3fs"):
        RunStore("s3://bucket/studies", "demo")


def test_an_unwritable_url_store_is_one_line(tmp_path):
    from scaling.errors import writable_folder

    (tmp_path / "a-file").write_text("")  # a folder cannot be made under a file, even by root
    with pytest.raises(UserError, match=r"^output_dir file://.*/a-file/demo: cannot write there \("):
        writable_folder(f"file://{tmp_path}/a-file/demo", "output_dir")


# ---------------------------------------------------------------- scratch <-> store


def _checkpoint(local: Path, step: int, files=("model.pt", "optim.pt")) -> None:
    from trainers.checkpoint import checkpoint_tag

    tag = local / "checkpoints" / checkpoint_tag(step)
    tag.mkdir(parents=True)
    for name in files:
        (tag / name).write_text(f"{name} at {step}")
    (local / "checkpoints" / "latest.json").write_text(json.dumps({"tag": tag.name, "step": step}))
    with open(local / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": step}) + "\n")


def test_checkpoints_go_to_the_store_pointer_last_and_come_back(tmp_path):
    from scaling.staging import pull, push_checkpoint, push_final

    remote, local = location(f"file://{tmp_path}/store/run"), tmp_path / "scratch"
    for step in (10, 20, 30):
        _checkpoint(local, step)
        push_checkpoint(remote, local, step, is_main=True)
    tags = sorted(p.name for p in (remote / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step00000020", "step00000030"]  # the newest two, as trainers/checkpoint.py keeps
    assert json.loads((remote / "checkpoints" / "latest.json").read_text())["step"] == 30
    assert len((remote / "metrics.jsonl").read_text().splitlines()) == 3

    elsewhere = tmp_path / "other-node"  # a retry on another node, with stale files of its own
    _checkpoint(elsewhere, 40, files=("stale.pt",))
    shared = tmp_path / "other-node.checkpoint"
    assert pull(remote, elsewhere, shared) == shared
    assert not (elsewhere / "checkpoints").exists()  # the ranks resume from the node's copy
    assert sorted(p.name for p in shared.iterdir()) == ["built", "latest.json", "step00000030"]
    assert (shared / "step00000030" / "optim.pt").read_text() == "optim.pt at 30"

    for name, text in (("result.json", '{"val_loss": 1.0}'), ("worker.log", "log"), ("spec.json", "{}")):
        (local / name).write_text(text)
    (local / "model").mkdir()
    (local / "model" / "model.safetensors").write_text("weights")
    push_final(remote, local, rank=0)
    assert not (remote / "checkpoints").exists()
    assert (remote / "model" / "model.safetensors").read_text() == "weights"
    assert json.loads((remote / "result.json").read_text()) == {"val_loss": 1.0}
    assert sorted(p.name for p in local.iterdir()) == ["worker.log", "worker.log.pushed"]  # the log only
    assert pull(remote, elsewhere, shared) is None  # a finished run: its record, no checkpoint
    assert (elsewhere / "result.json").exists() and not (elsewhere / "checkpoints").exists()


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_the_ranks_of_a_node_download_a_checkpoint_once(tmp_path, monkeypatch, request, scheme):
    """Every rank reads the whole checkpoint when it resumes, so the ranks of a node share one
    download (scaling/staging.py); a copy of an older tag, or one whose download was cut off, is
    replaced; a universal conversion there would run once too (trainers/checkpoint.py locks it).
    On S3 (moto) when s3fs is installed."""
    from scaling.staging import pull, push_checkpoint
    from scaling.storage import RemotePath

    if scheme == "s3":
        request.getfixturevalue("s3_endpoint")
    remote = location(f"file://{tmp_path}/store/run" if scheme == "file" else "s3://isoflop-test/pull/run")
    writer = tmp_path / "writer"
    for step in (10, 20):
        _checkpoint(writer, step)
        push_checkpoint(remote, writer, step, is_main=True)
    downloads = []
    real_download = RemotePath.download
    monkeypatch.setattr(RemotePath, "download", lambda self, local: (downloads.append(self.name),
                                                                      real_download(self, local)))
    shared = tmp_path / "node.checkpoint"
    for rank in range(4):  # four ranks on one node, each with its own scratch folder
        assert pull(remote, tmp_path / f"rank{rank}", shared) == shared
    assert downloads.count("step00000020") == 1
    assert sorted(p.name for p in (shared / "step00000020").iterdir()) == ["model.pt", "optim.pt"]

    (shared / "built").unlink()  # a download killed midway: no marker
    (shared / "step00000020" / "optim.pt").unlink()
    pull(remote, tmp_path / "rank0", shared)
    assert downloads.count("step00000020") == 2 and (shared / "step00000020" / "optim.pt").is_file()

    _checkpoint(writer, 30)
    push_checkpoint(remote, writer, 30, is_main=True)
    pull(remote, tmp_path / "rank0", shared)  # a newer checkpoint: the older copy goes
    assert sorted(p.name for p in shared.iterdir()) == ["built", "latest.json", "step00000030"]


def test_the_stores_log_keeps_every_attempt_on_every_node(memory_root, tmp_path, monkeypatch):
    """Attempt 1 on node A is killed before it pushes its log; 2 runs on A, 3 on node B, 4 on A
    again (whose scratch log holds attempts 1 and 2): the store's worker.log holds the four, once
    each."""
    from scaling.staging import LogHistory, push_logs

    monkeypatch.delenv("RANK", raising=False)
    remote = location(memory_root) / "runs" / "r1"
    for attempt, node in enumerate("aaba", start=1):
        scratch = tmp_path / node
        scratch.mkdir(exist_ok=True)
        history = LogHistory.at_attempt_start(remote, scratch)
        with open(scratch / "worker.log", "a") as log:  # the worker appends, as locally
            log.write(f"attempt {attempt}\n")
        if attempt != 1:  # kill -9: nothing pushed
            push_logs(remote, scratch, history)
    assert (remote / "worker.log").read_text() == "".join(f"attempt {a}\n" for a in (1, 2, 3, 4))
    assert (tmp_path / "a" / "worker.log").read_text() == "attempt 1\nattempt 2\nattempt 4\n"


def test_a_finished_run_is_fetched_once_and_again_when_its_record_changes(tmp_path, monkeypatch):
    from scaling.staging import fetch_run

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = location(f"file://{tmp_path}/store/runs/r1")
    (remote / "model" / "config.json").write_text("{}")
    (remote / "result.json").write_text('{"val_loss": 1.0}')
    local = fetch_run(remote)
    assert local.is_relative_to(tmp_path / "xdg") and (local / "model" / "config.json").is_file()
    (local / "model" / "marker").write_text("cached")
    assert fetch_run(remote) == local and (local / "model" / "marker").exists()  # not fetched again
    (remote / "result.json").write_text('{"val_loss": 0.5}')  # retrained since
    assert not (fetch_run(remote) / "model" / "marker").exists()
    assert json.loads((local / "result.json").read_text()) == {"val_loss": 0.5}
    assert fetch_run(tmp_path / "plain") == tmp_path / "plain"  # a local run folder is used in place


def test_two_fetches_of_one_run_at_once_download_it_once(tmp_path, monkeypatch):
    """Two `scaling pareto` processes on one machine refreshing the same run: one downloads, the
    other waits and finds the copy done (before, each removed and refilled the folder)."""
    import threading
    import time

    from scaling import staging

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    remote = location(f"file://{tmp_path}/store/runs/r1")
    (remote / "spec.json").write_text("{}")
    (remote / "model" / "config.json").write_text("{}")
    assert not (staging.fetch_run(remote) / "result.json").exists()  # not finished: pareto says so
    (remote / "result.json").write_text('{"val_loss": 1.0}')
    downloads, download = [], RemotePath.download

    def slow_download(self, local):
        downloads.append(self.name)
        time.sleep(0.2)  # long enough for the other fetch to arrive meanwhile
        download(self, local)

    monkeypatch.setattr(RemotePath, "download", slow_download)
    fetched = []
    threads = [threading.Thread(target=lambda: fetched.append(staging.fetch_run(remote)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(downloads) == ["model", "spec.json"]  # once each, by one of the two
    assert fetched[0] == fetched[1] and (fetched[0] / "result.json").read_text() == '{"val_loss": 1.0}'


def test_each_host_has_its_own_scratch_under_a_shared_root(tmp_path, monkeypatch):
    """A scratch root every node sees (a home directory on NFS) must not let two nodes share a
    folder: where flock is per node (Lustre localflock) neither would see the other's locks."""
    from scaling import staging

    monkeypatch.delenv("SCALING_SCRATCH_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "shared-home"))
    url = "s3://bucket/study/runs/r1"
    folders = {}
    for host in ("node-a", "node-b"):
        monkeypatch.setattr(staging.socket, "gethostname", lambda host=host: host)
        folders[host] = (staging.scratch_dir(url), staging.pulled_dir(url))
    root = tmp_path / "shared-home" / "isoflop-diffusion" / "scratch"
    for host, (scratch, copy) in folders.items():
        assert scratch.parent == copy.parent == root / host
    assert folders["node-a"][0].name == folders["node-b"][0].name  # the same run, on each host


def test_a_failed_attempt_leaves_its_log_in_the_store(tmp_path, monkeypatch):
    """The error and traceback go to status.json through the runner; the log goes beside it, as
    in a local store (the trainer is replaced by one that fails, to test the staging alone)."""
    import trainers.train
    from scaling.staging import pulled_dir, scratch_dir, train_staged

    monkeypatch.setenv("SCALING_SCRATCH_DIR", str(tmp_path / "scratch"))
    url = f"file://{tmp_path}/store/runs/r1"

    _checkpoint(tmp_path / "store" / "runs" / "r1", 10)  # the store holds a checkpoint to resume from

    def failing_run(spec, run_dir, **kwargs):
        (run_dir / "worker.log").write_text("step 10: loss nan\n")
        assert (kwargs["resume_root"] / "step00000010" / "model.pt").is_file()
        _checkpoint(run_dir, 20)  # saved here, then pushed (the push is not what is tested)
        raise RuntimeError("loss became nan at step 10")

    monkeypatch.setattr(trainers.train, "train_run", failing_run)
    with pytest.raises(RuntimeError, match="loss became nan"):
        train_staged(None, url, progress=False, cache_root=None)
    assert scratch_dir(url).is_relative_to(tmp_path / "scratch")
    assert (location(url) / "worker.log").read_text() == "step 10: loss nan\n"
    assert not pulled_dir(url).exists()  # the node's copy of the checkpoint goes with the attempt
    # as do the attempt's own checkpoints (a resume reads the store's); its log stays on the node
    assert not (scratch_dir(url) / "checkpoints").exists()
    assert (scratch_dir(url) / "worker.log").read_text() == "step 10: loss nan\n"


@contextlib.contextmanager
def _attempt_holding(folder: Path):
    """Another process holding `folder` as a live attempt does (staging.holding); killed with
    SIGKILL at the end, so no cleanup of its own: the kernel lets go of its lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_SH); print('held', flush=True); time.sleep(120)",
         str(folder.with_name(f".{folder.name}.inuse"))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.kill()
        holder.wait()


def _fail_an_attempt_of_another_run(tmp_path: Path, monkeypatch) -> None:
    """An attempt of run "third" starts on this node (sweeping stale checkpoints) and fails."""
    import trainers.train
    from scaling.staging import train_staged

    def failing_run(spec, run_dir, **kwargs):
        raise RuntimeError("loss became nan at step 10")

    monkeypatch.setattr(trainers.train, "train_run", failing_run)
    with pytest.raises(RuntimeError, match="loss became nan"):
        train_staged(None, f"file://{tmp_path}/store/runs/third", progress=False, cache_root=None)


def test_a_checkpoint_copy_left_by_a_killed_attempt_goes_at_the_next_attempt_here(
        tmp_path, monkeypatch, capsys):
    """A node's copy is held (a shared flock) by every rank of a live attempt; the next attempt to
    start on the node removes the copies nobody holds, and the kernel lets go of a killed one's."""
    from scaling.staging import drop_stale_checkpoints, pulled_dir

    monkeypatch.setenv("SCALING_SCRATCH_DIR", str(tmp_path / "scratch"))
    live, stale = (pulled_dir(f"file://{tmp_path}/store/runs/{name}") for name in ("live", "stale"))
    for copy in (live, stale):
        (copy / "step00000010").mkdir(parents=True)
        (copy / "step00000010" / "model.pt").write_bytes(b"\0" * 2**20)
    with _attempt_holding(live):  # an attempt of run "live", training on this node
        _fail_an_attempt_of_another_run(tmp_path, monkeypatch)
        assert live.is_dir() and not stale.exists()
        assert f"removed {stale.name}, a checkpoint copy left on this node by a killed attempt " \
               f"(1.0 MiB)" in capsys.readouterr().err
    drop_stale_checkpoints(live.parent)
    assert not live.exists()


def test_a_killed_attempts_own_checkpoints_go_at_the_next_attempt_here(tmp_path, monkeypatch, capsys):
    """A rank's scratch folder is held for its attempt like a node copy. A killed attempt's
    checkpoints there (every one of them in the store already) are removed by the next attempt
    of any run to start on the node; its log stays, for its own run's next attempt to push."""
    from scaling.staging import scratch_dir

    monkeypatch.setenv("SCALING_SCRATCH_DIR", str(tmp_path / "scratch"))
    live, killed = (scratch_dir(f"file://{tmp_path}/store/runs/{name}") for name in ("live", "killed"))
    for folder in (live, killed):
        _checkpoint(folder, 10)
        (folder / "worker.log").write_text("step 10\n")
    with _attempt_holding(live):  # an attempt of run "live", training on this node
        _fail_an_attempt_of_another_run(tmp_path, monkeypatch)
        assert (live / "checkpoints" / "step00000010" / "model.pt").is_file()
        assert not (killed / "checkpoints").exists()
        assert (killed / "worker.log").read_text() == "step 10\n"
        assert f"removed {killed.name}/checkpoints, the checkpoints in its scratch folder left on " \
               "this node by a killed attempt" in capsys.readouterr().err


def test_another_runs_folder_in_the_store_is_named_by_its_url(tmp_path, monkeypatch):
    """The trainer finds the mismatch in this node's scratch copy; the error names the store's
    folder, which is what the user must empty or delete."""
    from scaling.grid import expand
    from scaling.staging import train_staged
    from scaling.sweepfile import load_sweep
    from trainers.train import ForeignRunError

    monkeypatch.setenv("SCALING_SCRATCH_DIR", str(tmp_path / "scratch"))
    mine, theirs = list(expand(load_sweep(REPO / "sweeps" / "smoke.yaml")).runs)[:2]
    url = f"file://{tmp_path}/store/runs/r1"
    (location(url) / "spec.json").write_text(theirs.to_json())
    with pytest.raises(ForeignRunError) as err:
        train_staged(mine, url, progress=False, cache_root=None)
    assert str(err.value).startswith(f"{location(url)} holds another run ({theirs.run_id}); ")
    assert (location(url) / "spec.json").read_text() == theirs.to_json()  # left as it was


# ---------------------------------------------------------------- end to end, real Ray + DeepSpeed


@pytest.fixture
def url_sweep(tmp_path):
    """The smoke sweep cut to one budget (6 runs) with its run store at a file:// URL, checkpoints
    every 10 steps, and this test's own scratch, locks and data cache (XDG_CACHE_HOME)."""
    import shutil
    import tempfile

    from tests.scaling.raysession import kill_all, ray_processes

    raw = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    raw["budgets"] = [6e9]
    raw["output_dir"] = f"file://{tmp_path}/store"
    raw["recipe"]["checkpoint_every_steps"] = 10
    path = tmp_path / "smoke-url.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "SCALING_SCRATCH_DIR": str(tmp_path / "scratch")}
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    yield path, tmp_path / "store" / "smoke", tmp_path / "scratch", env, ray_tmp
    leftovers = ray_processes(ray_tmp)
    kill_all(leftovers)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftovers, f"Ray processes left behind: {[p.pid for p in leftovers]}"


def _scaling(*args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([SCALING, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=timeout)


def _training_with_checkpoint_in_store(root: Path, scratch: Path):
    """(run_id, pid) of a run whose store holds a checkpoint pointer and no result yet."""
    for pointer in root.glob("runs/*/checkpoints/latest.json"):
        run_dir = pointer.parents[1]
        pid_files = list(scratch.glob(f"*/{run_dir.name}-*/worker.pid"))
        if pid_files and not (run_dir / "result.json").exists():
            return run_dir.name, int(pid_files[0].read_text())
    return None


def test_a_sweep_into_a_url_store_resumes_from_the_store(url_sweep, tmp_path):
    path, root, scratch, env, ray_tmp = url_sweep
    proc = subprocess.Popen([SCALING, "run", str(path), "--no-progress", "--ray-temp-dir", ray_tmp],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **env})
    run_id, pid = wait_for(lambda: _training_with_checkpoint_in_store(root, scratch))
    os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 0, err
    assert f"results: file://{root}/results.parquet" in out

    records = {p.parent.name: json.loads(p.read_text()) for p in root.glob("runs/*/result.json")}
    assert len(records) == 6 and len(pd.read_parquet(root / "results.parquet")) == 6
    status = json.loads((root / "runs" / run_id / "status.json").read_text())
    assert status["state"] == "succeeded" and status["attempts"] == 2
    # the retry resumed from the store's newest checkpoint, downloaded into the node's copy, which
    # went once the retry saved a checkpoint of its own (scaling/staging.py)
    assert records[run_id]["resumed_from_step"] > 0
    for run_dir in root.glob("runs/*"):
        assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "worker.log").is_file()
        assert not (run_dir / "checkpoints").exists()  # removed once the run finished
    # every run succeeded: scratch folders, the node's copy, locks
    assert not list((scratch / socket.gethostname()).iterdir())
    # the killed attempt never pushed its log; the retry, on this node too, pushed both attempts'
    log = (root / "runs" / run_id / "worker.log").read_text()
    assert log.count(f" attempt of {run_id} on ") == 2, log[-3000:]
    assert "pulled checkpoint step" in log.split(f" attempt of {run_id} on ")[2]  # the retry's part
    assert not (REPO / "file:").exists()  # no URL was taken for a relative local path

    # the killed and resumed run equals the same spec trained uninterrupted into a local folder
    local = tmp_path / "local-run"
    trained = _scaling("train", "--spec", root / "runs" / run_id / "spec.json", "--out", local,
                       "--cache-dir", tmp_path / "xdg" / "isoflop-diffusion" / "data", "--no-progress",
                       env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    uninterrupted = json.loads((local / "result.json").read_text())
    print(f"\nURL store: killed + resumed val_loss {records[run_id]['val_loss']!r} (from step "
          f"{records[run_id]['resumed_from_step']}), local uninterrupted {uninterrupted['val_loss']!r}")
    assert abs(records[run_id]["val_loss"] - uninterrupted["val_loss"]) <= 1e-4

    rerun = _scaling("run", path, "--no-progress", "--ray-temp-dir", ray_tmp, env=env)
    assert rerun.returncode == 0 and "all 6 runs already succeeded" in rerun.stdout
    status = _scaling("status", path, env=env)
    assert status.returncode == 0 and "6 runs: succeeded 6" in status.stdout
    fitted = _scaling("fit", path, "--bootstrap", "0", env=env)
    assert f"to file://{root}/fits" in fitted.stdout, fitted.stderr
    assert (root / "fits" / "fits.csv").is_file()
    # pareto loads the models from the store: each run (and the AR judge) fetched into this
    # machine's cache once (staging.fetch_run)
    sampled = _scaling("pareto", path, "--runs", run_id, "--steps", "2", "--n-samples", "2", env=env)
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    cached = list((tmp_path / "xdg" / "isoflop-diffusion" / "runs" / socket.gethostname()).iterdir())
    assert run_id in {folder.name.rsplit("-", 1)[0] for folder in cached}, cached


# ---------------------------------------------------------------- S3, when its packages are installed


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A local S3 server (moto) on loopback with one bucket; fsspec reaches it through
    FSSPEC_S3_ENDPOINT_URL, the setting a user gives for MinIO or any S3-compatible store.
    Needs `pip install s3fs "moto[server]"`, which the project does not install (s3fs pins
    python-dateutil below constraints.txt's): skipped without them."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    from trainers.dist import find_free_port

    port = find_free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)  # this process read the environment at import
    location("s3://isoflop-test").mkdir()
    yield env
    server.stop()


def test_a_sweep_into_an_s3_store(s3_endpoint, tmp_path):
    import tempfile

    from tests.scaling.raysession import kill_all, ray_processes

    raw = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    raw["budgets"], raw["families"] = [6e9], raw["families"][:1]  # AR, 3 runs
    raw["output_dir"] = "s3://isoflop-test/studies"
    path = tmp_path / "smoke-s3.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**s3_endpoint, "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "SCALING_SCRATCH_DIR": str(tmp_path / "scratch")}
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        first = _scaling("run", path, "--no-progress", "--ray-temp-dir", ray_tmp, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        rerun = _scaling("run", path, "--no-progress", "--ray-temp-dir", ray_tmp, env=env)
        assert "all 3 runs already succeeded" in rerun.stdout, rerun.stderr[-3000:]
    finally:
        kill_all(ray_processes(ray_tmp))
    store = location("s3://isoflop-test/studies/smoke")
    runs = [p for p in (store / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 3
    for run in runs:
        assert (run / "result.json").is_file() and (run / "model" / "model.safetensors").is_file()
        assert not (run / "checkpoints").exists()
    from analysis.table import read_table

    assert len(read_table("s3://isoflop-test/studies/smoke")) == 3
    fitted = _scaling("fit", path, "--bootstrap", "0", env=env)
    assert "to s3://isoflop-test/studies/smoke/fits" in fitted.stdout, fitted.stderr
