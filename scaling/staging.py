"""A run whose run store is at a URL trains in a node-local scratch folder (scaling/storage.py).

DeepSpeed checkpoints, save_pretrained and the loss curve write to local files, and a run must
resume on whichever node Ray gives its next attempt, so the store is kept up to date at the three
moments that matter:

    pull             before training: the store's spec.json, metrics.jsonl and result.json replace
                     whatever scratch held, and its newest complete checkpoint is downloaded once
                     per node (`pull_checkpoint`) into a folder the node's ranks resume from;
    push_checkpoint  after each checkpoint: the checkpoint's files, then the loss curve, then
                     checkpoints/latest.json, so the store's pointer only ever names a checkpoint
                     whose files are all there (a kill mid-push resumes from the previous one);
    push_final       after training: model/, metrics.jsonl, spec.json and the worker logs (every
                     attempt's, from whichever node: LogHistory), then result.json last (present =
                     finished, as in a local store), then the store's checkpoints are removed.

Multi-worker runs (scaling/multiworker.py): each rank has a scratch folder of its own (ranks on
one node, or two Ray nodes on one machine, never share one) and pushes the checkpoint files it
wrote; a barrier separates the pushes from the pointer, which global rank 0 alone writes
(latest.json, result.json). Every rank reads the whole checkpoint when it resumes (DeepSpeed's
ZeRO-1/2 load reads every rank's optimizer shard), so the ranks of a node share one download of
it, `<run>.checkpoint/` beside their scratch folders: the first to take its lock downloads, the
others find it done. A universal conversion (another worker count: trainers/checkpoint.py) lands
there too, so it also runs once per node. The copy is dropped at the attempt's first checkpoint
(every rank has loaded by then) and when the attempt ends. Checkpoint tags the store's pointer
has named are never rewritten (a resumed run saves only later steps), so a copy left by a killed
attempt is reused when it is still the newest.

Nothing on a node outlives its use by much. A rank's own checkpoints in scratch are never read
again once pushed (`pull` clears them: a resume reads the store's), so an attempt that fails
removes them as it ends, keeping only its log. An attempt that is killed cannot, and its run may
go on elsewhere, which would leave whole checkpoints (a node copy, a rank's own) on this node for
good: so every rank holds a shared flock on the `.inuse` files of its scratch folder and of its
node copy for the attempt, and each attempt that starts on the node removes the checkpoints no
live attempt holds (`drop_stale_checkpoints`). A local run directory skips all of this: the
trainer writes in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scaling.locks import flock
from scaling.storage import RemotePath, is_url, local_state_dir, url_key
from trainers.checkpoint import KEEP, LATEST, build_once, checkpoint_tag, lock_of
from trainers.dist import barrier
from trainers.records import CHECKPOINT_DIR, METRICS_FILE, MODEL_DIR, RESULT_FILE, SPEC_FILE

SCRATCH_ENV = "SCALING_SCRATCH_DIR"  # where runs of URL stores train on this node
PUSHED_SUFFIX = ".pushed"  # beside a scratch log: how many of its bytes are in the store's copy
PULLED_SUFFIX = ".checkpoint"  # beside the ranks' scratch folders: the node's copy of the checkpoint


def scratch_dir(run_dir: str | Path) -> Path:
    """The folder a run trains in on this node: run_dir itself when local, else a scratch folder
    named after the run (and a hash of its URL, so two stores never share one) and, past rank 0,
    the rank."""
    if not is_url(run_dir):
        return Path(run_dir)
    rank = _rank()
    return _node_scratch(run_dir, f"-rank{rank}" if rank else "")


def pulled_dir(run_dir: str | Path) -> Path:
    """This node's copy of a URL run's newest stored checkpoint, shared by its ranks here."""
    return _node_scratch(run_dir, PULLED_SUFFIX)


def _node_scratch(run_dir: str | Path, suffix: str) -> Path:
    url = str(run_dir).rstrip("/")
    return scratch_root() / f"{url.rsplit('/', 1)[-1]}-{url_key(url)}{suffix}"


def scratch_root() -> Path:
    """This machine's scratch: $SCALING_SCRATCH_DIR, else the local state folder, then a folder
    named after the host. The root may be shared by every node (a home directory on NFS holds
    ~/.cache), and some shared filesystems keep flock per node (Lustre localflock, NFS
    local_lock=flock): there a node copy built on two nodes at once, or a stale-checkpoint sweep
    that cannot see another node's hold, would break a live attempt. Within a host's folder every
    lock holder is on the one machine."""
    root = Path(os.environ.get(SCRATCH_ENV) or local_state_dir() / "scratch")
    return root / host_folder_name()


def host_folder_name() -> str:
    """This machine's folder under a root that several machines may share (scratch_root)."""
    return socket.gethostname().replace(os.sep, "_")


def default_data_cache() -> Path:
    """The prepared-data cache of a sweep whose store is at a URL: local to each node."""
    return local_state_dir() / "data"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))  # set by Ray Train for multi-worker runs


def worker_file(rank: int, suffix: str) -> str:
    """worker.log / worker.pid for rank 0, worker.<rank>.log / .pid for the others."""
    return f"worker.{suffix}" if rank == 0 else f"worker.{rank}.{suffix}"


def _clear(local: Path, names) -> None:
    for name in names:
        stale = local / name
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class LogHistory:
    """The store keeps one log per rank for all attempts, on whichever nodes they ran: what the
    store held when this attempt started, then what this node's scratch log (which appends, as a
    local store's log does) holds that the store does not: this attempt, and an earlier attempt
    here that was killed before it could push its log."""

    earlier: bytes = b""  # the store's log at the start of this attempt
    start: int = 0  # the bytes of the scratch log already in the store

    @classmethod
    def at_attempt_start(cls, remote: RemotePath, local: Path) -> "LogHistory":
        log = local / worker_file(_rank(), "log")
        try:
            earlier = (remote / log.name).read_bytes()
        except FileNotFoundError:
            earlier = b""
        try:
            start = int(log.with_name(log.name + PUSHED_SUFFIX).read_text())
        except (FileNotFoundError, ValueError):  # nothing pushed from here yet (or a torn count)
            start = 0
        return cls(earlier, start)


def pull(remote: RemotePath, local: Path, shared: Path) -> Path | None:
    """Make scratch hold what the store holds for this run, and `shared` (this node's copy) its
    newest checkpoint; the checkpoint folder to resume from, or None (module docstring)."""
    local.mkdir(parents=True, exist_ok=True)
    _clear(local, (MODEL_DIR, CHECKPOINT_DIR, RESULT_FILE, METRICS_FILE))
    for name in (SPEC_FILE, RESULT_FILE, METRICS_FILE):
        if (remote / name).exists():
            (remote / name).download(local / name)
    pointer = remote / CHECKPOINT_DIR / LATEST
    if (local / RESULT_FILE).exists() or not pointer.exists():
        return None
    return pull_checkpoint(remote, json.loads(pointer.read_text()), shared)


def pull_checkpoint(remote: RemotePath, info: dict, shared: Path) -> Path:
    """`shared` holding the store's checkpoint info["tag"] and a latest.json naming it: downloaded
    by the first rank of this node to take the lock, found done by the others."""
    tag = info["tag"]

    def download(folder: Path) -> None:
        started = time.perf_counter()
        (remote / CHECKPOINT_DIR / tag).download(folder / tag)
        (folder / LATEST).write_text(json.dumps({"tag": tag, "step": info["step"]}))
        print(f"pulled checkpoint {tag} from the store for this node's ranks: "
              f"{folder_mib(folder / tag):.1f} MiB in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)

    return build_once(shared, tag, download)  # its lock is kept by drop_pulled, removed by drop_scratch


@contextlib.contextmanager
def holding(folder: Path):
    """Hold a scratch folder or a node copy for an attempt (module docstring): a shared flock on
    its `.inuse` file, which the kernel drops when the process ends, however it ends."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(_inuse_of(folder), "a") as held:
        flock(held, fcntl.LOCK_SH)
        yield


def drop_stale_checkpoints(scratch_root: Path) -> None:
    """Remove the checkpoints on this node that no live attempt holds, left by killed attempts:
    node copies whole, and the `checkpoints/` of rank scratch folders (their logs stay, for the
    run's next attempt here to push: LogHistory)."""
    folders = (p for p in scratch_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in sorted(folders):
        is_copy = folder.name.endswith(PULLED_SUFFIX)
        stale = folder if is_copy else folder / CHECKPOINT_DIR
        if not stale.is_dir():
            continue
        with open(_inuse_of(folder), "a") as probe:
            try:
                flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # an attempt on this node holds it (ours among them)
            size_mib = folder_mib(stale)
            shutil.rmtree(stale, ignore_errors=True)
            what = "a checkpoint copy" if is_copy else "the checkpoints in its scratch folder"
            print(f"removed {stale.relative_to(scratch_root)}, {what} left on this node by a killed "
                  f"attempt ({size_mib:.1f} MiB)", file=sys.stderr)


def folder_mib(folder: Path) -> float:
    """The MiB the files under `folder` hold."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def _inuse_of(shared: Path) -> Path:
    return shared.with_name(f".{shared.name}.inuse")


def drop_pulled(shared: Path) -> None:
    """Remove this node's copy once every rank has loaded it. Its lock file stays (empty): a lock
    file unlinked while another process waits on it would let two processes hold the lock."""
    shutil.rmtree(shared, ignore_errors=True)


def push_checkpoint(remote: RemotePath, local: Path, step: int, is_main: bool) -> None:
    """After every rank saved checkpoint `step` locally: its files, the loss curve, the pointer."""
    tag = checkpoint_tag(step)
    (remote / CHECKPOINT_DIR / tag).upload(local / CHECKPOINT_DIR / tag)  # the files this rank wrote
    barrier()  # every rank's files are in the store
    if not is_main:
        return
    if (local / METRICS_FILE).exists():
        (remote / METRICS_FILE).upload(local / METRICS_FILE)
    (remote / CHECKPOINT_DIR / LATEST).write_text(json.dumps({"tag": tag, "step": step}))
    tags = sorted(p.name for p in (remote / CHECKPOINT_DIR).iterdir()
                  if p.is_dir() and p.name.startswith("step"))
    for old in tags[:-KEEP]:
        (remote / CHECKPOINT_DIR / old).rmtree()


def push_final(remote: RemotePath, local: Path, rank: int, logs: LogHistory = LogHistory()) -> None:
    """After training: the run's files, result.json last, then no checkpoints in the store."""
    push_logs(remote, local, logs)  # each rank its own; rank 0 writes everything else
    if rank == 0:
        for name in (MODEL_DIR, METRICS_FILE, SPEC_FILE):
            if (local / name).exists():
                (remote / name).upload(local / name)
        (remote / RESULT_FILE).write_bytes((local / RESULT_FILE).read_bytes())
        (remote / CHECKPOINT_DIR).rmtree()
    _clear(local, (MODEL_DIR, CHECKPOINT_DIR, METRICS_FILE, SPEC_FILE, RESULT_FILE))  # scratch keeps the logs


def drop_scratch(run_dir: str | Path) -> None:
    """After an attempt succeeded (its files and logs are in the store): remove this rank's scratch
    folder and the node's checkpoint copy with its lock (no later attempt will take it). A local run
    directory is the run itself: kept. A failed attempt's scratch stays, since its log may not have
    reached the store (LogHistory)."""
    if not is_url(run_dir):
        return
    local, shared = scratch_dir(run_dir), pulled_dir(run_dir)
    shutil.rmtree(local, ignore_errors=True)
    _inuse_of(local).unlink(missing_ok=True)
    drop_pulled(shared)
    lock_of(shared).unlink(missing_ok=True)
    _inuse_of(shared).unlink(missing_ok=True)


def fetch_run(run_dir) -> Path:
    """A finished run's folder on this machine, to load its model from (scaling pareto): run_dir
    itself when local; for a URL store its model/, spec.json and result.json, downloaded into this
    machine's cache unless the cached copy was made from the store's current result.json (a run
    retrained since, after its folder was deleted, has another record). Two `pareto` processes
    fetching one run download it once (build_once's lock); a run not finished yet is a folder
    without result.json, for pareto.load_run to say so."""
    if not is_url(run_dir):
        return Path(run_dir)
    remote = RemotePath(str(run_dir))
    local = local_state_dir() / "runs" / host_folder_name() / f"{remote.name}-{url_key(str(remote))}"
    try:
        record = (remote / RESULT_FILE).read_bytes()
    except FileNotFoundError:
        record = None

    def download(folder: Path) -> None:
        for name in (MODEL_DIR, SPEC_FILE):
            if (remote / name).exists():
                (remote / name).download(folder / name)
        if record is not None:
            (folder / RESULT_FILE).write_bytes(record)

    stamp = hashlib.sha256(record).hexdigest() if record is not None else "no result.json"
    return build_once(local, stamp, download)


def train_staged(spec, run_dir: str | Path, *, progress: bool, cache_root: Path | None) -> dict:
    """trainers.train.train_run for a run directory that may be a URL (then through scratch)."""
    from trainers.train import train_run

    if not is_url(run_dir):
        return train_run(spec, Path(run_dir), progress=progress, cache_root=cache_root)
    remote, local, shared = RemotePath(str(run_dir)), scratch_dir(run_dir), pulled_dir(run_dir)
    with holding(shared), holding(local):
        drop_stale_checkpoints(local.parent)  # after taking ours: they are held, so they stay
        return _train_through_scratch(spec, remote, local, shared, progress, cache_root)


def _train_through_scratch(spec, remote: RemotePath, local: Path, shared: Path, progress: bool,
                           cache_root: Path | None) -> dict:
    from trainers.train import ForeignRunError, train_run

    resume_root = pull(remote, local, shared)
    logs = LogHistory.at_attempt_start(remote, local)

    def on_checkpoint(step: int, is_main: bool) -> None:
        push_checkpoint(remote, local, step, is_main)
        drop_pulled(shared)  # superseded, and every rank has loaded it (it trained since)

    try:
        result = train_run(spec, local, progress=progress, cache_root=cache_root or default_data_cache(),
                           on_checkpoint=on_checkpoint, resume_root=resume_root)
    except ForeignRunError as err:  # name the store's folder, not this node's copy of it
        push_logs(remote, local, logs)
        raise ForeignRunError(remote, err.what) from None
    except BaseException:
        push_logs(remote, local, logs)  # the failed attempt's log beside its status.json, as locally
        _clear(local, (CHECKPOINT_DIR,))  # in the store already, and never read from here again
        raise
    finally:
        drop_pulled(shared)
    push_final(remote, local, _rank(), logs)
    return result


def push_logs(remote: RemotePath, local: Path, history: LogHistory = LogHistory()) -> None:
    """The store's log: the earlier attempts', then this one's. Best effort (a store that cannot be
    reached must not hide the run's own error)."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = local / worker_file(_rank(), "log")
    try:
        if log.exists():
            text = log.read_bytes()
            (remote / log.name).write_bytes(history.earlier + text[history.start:])
            log.with_name(log.name + PUSHED_SUFFIX).write_text(str(len(text)))
    except Exception:  # noqa: BLE001 - see the docstring
        pass
