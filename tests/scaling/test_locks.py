"""File locks: a filesystem without them is one line naming the file and the fix (scaling/locks.py)."""

from __future__ import annotations

import errno
import fcntl

import pytest

from scaling import locks
from scaling.cli import main
from scaling.errors import UserError
from scaling.store import RunStore
from tests.scaling.test_cli import _smoke_in
from trainers.checkpoint import build_once


@pytest.fixture
def no_locks(monkeypatch):
    """flock as on NFSv3 without its lock daemon: every lock request fails with ENOLCK."""
    def refuse(handle, operation):
        if operation & (fcntl.LOCK_EX | fcntl.LOCK_SH):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", refuse)


def test_a_held_lock_is_still_a_blocking_error(tmp_path):
    path = tmp_path / "x.lock"
    with open(path, "a") as first, open(path, "a") as second:
        locks.flock(first, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError):  # the callers' "held elsewhere" case, unchanged
            locks.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_other_errors_are_not_dressed_up(tmp_path, monkeypatch):
    def broken(handle, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(locks.fcntl, "flock", broken)
    with open(tmp_path / "x.lock", "a") as handle, pytest.raises(OSError, match="Input/output"):
        locks.flock(handle, fcntl.LOCK_EX)


def test_the_driver_lock_on_a_filesystem_without_locks(tmp_path, no_locks):
    store = RunStore(tmp_path / "out", "demo")
    with pytest.raises(UserError) as caught, store.driving():
        pass
    message = str(caught.value)
    assert ".driver.lock: the filesystem under it does not support file locks (No locks available)" \
        in message
    assert "Lustre: -o flock" in message and "a URL (s3://" in message
    assert "\n" not in message


def test_a_build_on_a_filesystem_without_locks(tmp_path, no_locks):
    built = []
    with pytest.raises(UserError, match=r"\.copy\.lock: the filesystem under it does not support file "
                                        r"locks .*move that folder to a filesystem that has them"):
        build_once(tmp_path / "copy", "stamp-1", built.append)
    assert built == []  # nothing was built without the lock


def _smoke_with_a_running_run(tmp_path):
    """(sweep file, run id, store): sweeps/smoke.yaml into tmp_path/out, its first run marked
    running, as a driver leaves it."""
    from scaling.sweepfile import load_plan

    sweep = _smoke_in(tmp_path)
    run_id = load_plan(sweep)[1].runs[0].run_id
    store = RunStore(tmp_path / "out", "smoke")
    store.write_status(run_id, "running", attempts=1)
    return sweep, run_id, store


def test_status_on_a_filesystem_without_locks_shows_the_table(tmp_path, no_locks, capsys):
    """`scaling status` only reads: without locks it cannot ask whether a driver holds the sweep,
    so a running run is `running?` and the lock line says why, instead of the command failing."""
    sweep, run_id, store = _smoke_with_a_running_run(tmp_path)
    (store.root / ".driver.lock").touch()  # left by an earlier driver
    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"running?  1      -         -       {run_id}" in out
    assert "interrupted" not in out and "no driver: rerun" not in out
    assert ("cannot tell whether a `scaling run` drives this sweep now: "
            f"{store.root / '.driver.lock'}: the filesystem under it does not support file locks "
            "(No locks available)") in out


MOUNT_TABLE = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/home /home nfs rw,vers=3,nolock,proto=tcp,local_lock=all 0 0
server:/data /data nfs4 rw,vers=4.2,local_lock=none 0 0
server:/v3 /v3 nfs rw,vers=3,local_lock=none 0 0
mgs@tcp:/fs /lustre lustre rw,localflock 0 0
mgs@tcp:/fs2 /lustre2 lustre rw,flock 0 0
server:/odd /mnt/with\\040space nfs rw,vers=3,local_lock=flock 0 0
"""


@pytest.mark.parametrize("path, said", [
    ("/home/me/study/demo", "nfs at /home, mounted nolock"),
    ("/home", "nfs at /home, mounted nolock"),
    ("/homework/demo", None),  # not under /home
    ("/data/study", None),  # NFSv4: locks the server keeps
    ("/v3/study", None),  # NFSv3 with its lock daemon
    ("/lustre/project/out", "lustre at /lustre, mounted localflock"),
    ("/lustre2/project/out", None),
    ("/mnt/with space/out", "nfs at /mnt/with space, mounted local_lock=flock"),
    ("/tmp/study", None),
])
def test_mounts_whose_locks_hold_on_one_machine_only(path, said):
    assert locks.local_lock_mount(path, MOUNT_TABLE) == said


def test_the_driver_says_when_its_lock_keeps_out_only_this_machine(tmp_path, monkeypatch, capsys):
    """flock works there, so the sweep runs; a driver on another machine would not be refused,
    and that is one line on stderr with the fix."""
    _nolock_mount_over(tmp_path, monkeypatch)
    table = tmp_path / "mounts"
    store = RunStore(tmp_path / "out", "demo")
    with store.driving():
        pass
    err = capsys.readouterr().err
    assert err == (f"warning: {tmp_path}/out/demo/.driver.lock is on nfs at {tmp_path}, mounted "
                   "nolock, whose file locks hold on this machine only: a `scaling run` of this "
                   "sweep on another machine would not be refused; drive it from one machine, or "
                   f"set output_dir to file://{tmp_path}/out (a lease in the store then keeps out "
                   "drivers elsewhere)\n")
    table.write_text("/dev/sda1 / ext4 rw 0 0\n")
    with store.driving():
        pass
    assert capsys.readouterr().err == ""


def _nolock_mount_over(tmp_path, monkeypatch) -> None:
    table = tmp_path / "mounts"
    table.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/x {tmp_path} nfs rw,vers=3,nolock 0 0\n")
    monkeypatch.setattr(locks, "MOUNTS", str(table))


def test_with_locks_per_machine_a_driver_elsewhere_is_named_not_presumed_dead(tmp_path, monkeypatch,
                                                                               capsys):
    """The lock keeps its last driver's line. Where locks hold per machine and that line names
    another host, `scaling status` here cannot tell whether it runs: `running?`, not
    `interrupted` with "rerun" (which would start a second driver); `scaling run` here warns."""
    _nolock_mount_over(tmp_path, monkeypatch)
    sweep, run_id, store = _smoke_with_a_running_run(tmp_path)
    lock = store.root / ".driver.lock"
    lock.write_text("pid 4242 on node-7 since 2026-11-28 08:00:00")
    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"running?  1      -         -       {run_id}" in out
    assert (f"cannot tell whether a `scaling run` drives this sweep now: {lock} is on nfs at "
            f"{tmp_path}, mounted nolock, whose file locks hold on each machine only, and the last "
            "driver was pid 4242 on node-7 since 2026-11-28 08:00:00; run `scaling status` on "
            "node-7 to know whether it still drives the sweep") in out
    with store.driving():
        pass
    assert capsys.readouterr().err.endswith(
        "; the last driver of this sweep was pid 4242 on node-7 since 2026-11-28 08:00:00: if it "
        "still runs, stop this one\n")
    # the last driver is now this machine's, and gone: status may say so
    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"interrupted  1      -         -       {run_id}" in out
    assert "no driver: rerun" in out
