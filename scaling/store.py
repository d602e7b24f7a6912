"""The run store: one folder per run, records written atomically, a results table rebuilt from them.

    <output_dir>/<sweep>/
      runs/<run_id>/spec.json       the RunSpec (written at dispatch; same content every time)
      runs/<run_id>/status.json     state pending|running|succeeded|failed|interrupted, attempts, error
      runs/<run_id>/metrics.jsonl   the loss curve (written by the trainer)
      runs/<run_id>/result.json     the result record (written once, atomically, by the trainer)
      runs/<run_id>/checkpoints/    periodic checkpoints for resume
      results.parquet, results.csv  one row per succeeded run of the current plan
      .driver.lock                  held (flock) by the one `scaling run` driving the sweep
      driver.json                   at a URL: that driver's lease, renewed (scaling/lease.py)

result.json is the source of truth for "done": a run whose record exists is never retrained, even if
its status was not updated because the driver died in between.

output_dir may also be an fsspec URL (s3://bucket/prefix): the same layout, each record one put,
the driver lock on the driver's machine plus a lease record in the store, and runs trained in node-local scratch folders that are
pushed to the store at each checkpoint and at the end (scaling/storage.py, scaling/staging.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from scaling.errors import UserError, unwritable, writable_folder
from scaling.locks import flock, node_local_locks
from scaling.runspec import RunSpec
from scaling.storage import RemotePath, local_state_dir, location, url_key

STATES = ("pending", "running", "succeeded", "failed", "interrupted")
DRIVER_LOCK = ".driver.lock"
DRIVER_LOCK_FIX = ("mount it with locks (NFS: with its lock daemon running; Lustre: "
                   "-o flock), or set output_dir to a local folder or a URL (s3://...: the lock is "
                   "then on this machine, and a lease in the store keeps out drivers elsewhere)")


def _driver_host(line: str) -> str | None:
    """The host of a driver lock's line ("pid N on HOST since T"), or None."""
    match = re.match(r"pid \d+ on (\S+) since ", line)
    return match.group(1) if match else None


def write_atomic(path: Path | RemotePath, data: str | bytes) -> None:
    """Write text or bytes so readers see the old file or the new one, never half of either."""
    data = data.encode() if isinstance(data, str) else data
    if isinstance(path, RemotePath):
        path.write_bytes(data)  # one put (scaling/storage.py)
        return
    write_atomic_bytes(path, data)


def parquet_bytes(frame) -> bytes:
    """A DataFrame as a parquet file's bytes, for write_atomic."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """write_atomic for bytes on a local filesystem: a temp file beside it, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON record, or None when absent or unreadable (a torn file is treated as missing)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _parse_json(blob: bytes | None) -> dict[str, Any] | None:
    try:
        return json.loads(blob) if blob is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # as read_json: a torn record is a missing one


def run_state(run_id: str, status: dict[str, Any], has_result: bool, has_checkpoint: bool) -> "RunState":
    """A run's state from its records: result.json decides success, whatever status.json says."""
    state = "succeeded" if has_result else status.get("state", "pending")
    if state == "succeeded" and not has_result:
        state = "failed"  # a success without its record is not a success
    return RunState(run_id, state, int(status.get("attempts", 0)), status.get("error"),
                    has_result, has_checkpoint)


@dataclass(frozen=True)
class RunState:
    run_id: str
    state: str
    attempts: int
    error: str | None
    has_result: bool
    has_checkpoint: bool


class RunStore:
    def __init__(self, output_dir: str | Path, sweep_name: str):
        self.root = location(output_dir) / sweep_name  # a Path, or a RemotePath for a URL
        self.runs_dir = self.root / "runs"
        self._lease = None  # scaling.lease.Lease while a URL store's driver holds it (driving)

    @property
    def lock_file(self) -> Path:
        """The driver lock: in the store when it is a local folder, else on this machine."""
        if isinstance(self.root, RemotePath):
            return local_state_dir() / "locks" / f"{url_key(str(self.root))}.lock"
        return self.root / DRIVER_LOCK

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def write_spec(self, spec: RunSpec) -> Path:
        path = self.run_dir(spec.run_id) / "spec.json"
        text = spec.to_json()
        if not path.exists() or path.read_text() != text:
            write_atomic(path, text)
        return path

    def read_status(self, run_id: str) -> dict[str, Any]:
        return read_json(self.run_dir(run_id) / "status.json") or {"state": "pending", "attempts": 0}

    def write_status(self, run_id: str, state: str, **fields: Any) -> None:
        assert state in STATES, state
        record = {**self.read_status(run_id), **fields, "state": state,
                  "updated_at": time.time(), "host": socket.gethostname()}
        if state == "succeeded":
            record.pop("error", None)
            record.pop("traceback", None)
        write_atomic(self.run_dir(run_id) / "status.json", json.dumps(record, indent=2))

    def read_result(self, run_id: str) -> dict[str, Any] | None:
        return read_json(self.run_dir(run_id) / "result.json")

    def has_checkpoint(self, run_id: str) -> bool:
        ckpt = self.run_dir(run_id) / "checkpoints"
        return ckpt.is_dir() and any(ckpt.iterdir())

    def state(self, run_id: str) -> RunState:
        return run_state(run_id, self.read_status(run_id), self.read_result(run_id) is not None,
                         self.has_checkpoint(run_id))

    def snapshot(self, run_ids: list[str]) -> dict[str, tuple[RunState, dict[str, Any] | None]]:
        """Each run's state and result record. At a URL, one listing of runs/ and one batch of
        reads, which fsspec fetches concurrently from an object store, instead of four requests
        per run, one after the other (a 225-run sweep on S3: `scaling status` in seconds)."""
        if not isinstance(self.runs_dir, RemotePath):
            snapshot = {}
            for rid in run_ids:
                result = self.read_result(rid)  # once: state() would read it again
                snapshot[rid] = (run_state(rid, self.read_status(rid), result is not None,
                                           self.has_checkpoint(rid)), result)
            return snapshot
        files = self.runs_dir.find_relative()
        with_checkpoint = {f.split("/", 1)[0] for f in files if f.split("/")[1:2] == ["checkpoints"]}
        wanted = [f"{rid}/{name}" for rid in run_ids for name in ("status.json", "result.json")
                  if f"{rid}/{name}" in files]
        blobs = self.runs_dir.read_many(wanted)
        snapshot = {}
        for rid in run_ids:
            status = _parse_json(blobs.get(f"{rid}/status.json")) or {"state": "pending", "attempts": 0}
            result = _parse_json(blobs.get(f"{rid}/result.json"))
            snapshot[rid] = (run_state(rid, status, result is not None, rid in with_checkpoint), result)
        return snapshot

    def known_run_ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir())

    @contextlib.contextmanager
    def driving(self):
        """Hold the sweep's driver lock for the block, or UserError naming who holds it.

        Two drivers on one sweep (a second terminal, `make demo` twice) would train the same runs
        into the same folders, one resuming from checkpoints the other is still writing. The lock
        is an flock on <root>/.driver.lock: the kernel drops it when its process dies, kill -9
        included, so a rerun after a crash is never locked out. On a shared filesystem the lock
        excludes drivers on other machines where the filesystem's locks are cluster-wide (NFS by
        default, Lustre with -o flock); where they hold per machine (scaling/locks.py) the driver
        says so in one line. A store at a URL, whose lock file is on this machine, also takes a
        lease in the store (scaling/lease.py), which excludes drivers on other machines.
        """
        import fcntl

        writable_folder(self.root, "output_dir")
        lock_file = writable_folder(self.lock_file.parent, "output_dir") / self.lock_file.name
        try:
            handle = open(lock_file, "a+")
        except OSError as err:  # the folder exists but is not ours to write
            raise unwritable(self.root, "output_dir", err) from None
        with handle:
            try:
                flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, DRIVER_LOCK_FIX)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(f"{self.root}: another `scaling run` is driving this sweep ({holder}); "
                                "wait for it, or stop it, then rerun (finished runs are kept)") from None
            handle.seek(0)
            previous = handle.read().strip()  # the last driver's line, kept after it exits
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            self._warn_if_locks_are_node_local(previous)
            self._lease = self._take_lease()
            try:
                yield self
            finally:
                if self._lease is not None:
                    self._lease.release()
                self._lease = None
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _per_machine_locks(self) -> str | None:
        """The mount under a local store's driver lock when its locks hold per machine only
        (scaling/locks.py); None for a URL store, whose lease covers other machines."""
        return None if isinstance(self.root, RemotePath) else node_local_locks(self.lock_file)

    def _warn_if_locks_are_node_local(self, previous: str) -> None:
        if (mount := self._per_machine_locks()) is None:
            return
        url = f"file://{self.root.parent.resolve()}"
        elsewhere = ""
        if _driver_host(previous) not in (None, socket.gethostname()):
            elsewhere = (f"; the last driver of this sweep was {previous}: if it still runs, stop "
                         "this one")
        print(f"warning: {self.lock_file} is on {mount}, whose file locks hold on this machine "
              "only: a `scaling run` of this sweep on another machine would not be refused; drive "
              f"it from one machine, or set output_dir to {url} (a lease in the store then keeps "
              f"out drivers elsewhere){elsewhere}", file=sys.stderr)

    def driver_elsewhere(self) -> str | None:
        """For `scaling status` when no driver holds the lock here: where the store's locks hold
        per machine and the last driver ran on another machine, why nobody here can tell whether
        it still runs (one line); else None."""
        if (mount := self._per_machine_locks()) is None:
            return None
        try:
            last = self.lock_file.read_text().strip()
        except OSError:
            return None
        if (host := _driver_host(last)) in (None, socket.gethostname()):
            return None  # a driver on this machine would hold a lock seen here: it is gone
        return (f"{self.lock_file} is on {mount}, whose file locks hold on each machine only, and "
                f"the last driver was {last}; run `scaling status` on {host} to know whether it "
                "still drives the sweep")

    def check_driving(self) -> None:
        """Raise scaling.lease.LeaseLost when another driver took this sweep over (a URL store
        whose lease lapsed while this driver stalled); a no-op for a local store."""
        if self._lease is not None:
            self._lease.check()

    def _take_lease(self):
        """For a store at a URL, the lease that excludes drivers on other machines (scaling/lease.py)."""
        if not isinstance(self.root, RemotePath):
            return None
        from scaling.lease import Lease

        lease = Lease(self.root)
        lease.acquire()
        lease.start_renewing()
        return lease

    def driver(self) -> str | None:
        """Who drives the sweep now ("pid N on HOST since T"), or None when no driver holds the
        lock (so a run whose status still says running was interrupted)."""
        import fcntl

        if isinstance(self.root, RemotePath):
            from scaling.lease import live_holder

            holder = live_holder(self.root)  # drivers on other machines too
            if holder is not None:
                return holder
        try:
            handle = open(self.lock_file)
        except OSError:
            return None
        with handle:
            try:
                flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB, DRIVER_LOCK_FIX)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None

    def unsure_driver(self) -> str | None:
        """For a store at a URL whose lease record is another machine's and looks lapsed (or
        stamped in the future) by this machine's clock: that record, described; else None. Its
        driver died, or that machine's clock differs; only watching the record tells (`scaling
        run` does, scaling/lease.py)."""
        if not isinstance(self.root, RemotePath):
            return None
        from scaling.lease import unsure_holder

        return unsure_holder(self.root)

    def rebuild_results(self, specs: Iterable[RunSpec]) -> Path | None:
        """results.parquet + results.csv from the result records of the plan's succeeded runs."""
        import pandas as pd

        snapshot = self.snapshot([spec.run_id for spec in specs])
        rows = [results_row(rec) for spec in specs if (rec := snapshot[spec.run_id][1])]
        if not rows:
            return None
        frame = pd.DataFrame(rows).sort_values(["family", "flops_budget", "n_params"])
        parquet = self.root / "results.parquet"
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(parquet, parquet_bytes(frame))
        write_atomic(self.root / "results.csv", frame.to_csv(index=False))
        return parquet


# Columns of the results table, in order; the analysis reads family, flops_budget, n_params,
# n_tokens and val_loss (see analysis/table.py).
RESULT_COLUMNS = (
    "run_id", "sweep", "family", "family_name", "options", "flops_budget", "achieved_flops",
    "flops_convention", "n_layers", "d_model", "n_heads", "n_params", "n_params_total", "n_tokens",
    "tokens_per_param", "steps", "val_loss", "val_bits_per_byte", "train_loss",
    "unigram_entropy_nats", "tokens_per_second", "wall_seconds", "setup_seconds",
    "peak_memory_bytes", "device", "precision", "world_size", "cpu_capability", "config_hash",
    "code_version")  # where and how each run trained: a sweep's tiers may mix GPUs and CPUs


def results_row(record: dict[str, Any]) -> dict[str, Any]:
    """Flatten one result record into a table row (family = the label, e.g. mdlm-lowvar)."""
    spec = record.get("spec", {})
    shape = spec.get("shape", {})
    row = {
        "run_id": record.get("run_id"), "sweep": spec.get("sweep"), "family": spec.get("label"),
        "family_name": spec.get("family"), "options": json.dumps(spec.get("options", {}), sort_keys=True),
        "flops_budget": spec.get("flops_budget"), "n_layers": shape.get("n_layers"),
        "d_model": shape.get("d_model"), "n_heads": shape.get("n_heads"),
        "tokens_per_param": spec.get("tokens_per_param"), "steps": spec.get("steps"),
    }
    for column in RESULT_COLUMNS:
        if column not in row:
            row[column] = record.get(column, spec.get(column))
    return row
