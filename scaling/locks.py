"""File locks (flock), and one line instead of a traceback where a filesystem has none.

flock keeps the processes that share a folder apart: one driver per sweep (scaling/store.py), one
tokenisation per prepared-data cache (trainers/data.py), one build of a node's checkpoint copy or
universal conversion (trainers/checkpoint.build_once), and no removal of a copy an attempt still
uses (scaling/staging.py). The kernel drops a lock when its process dies, however it dies.

Some shared filesystems have no locks: NFSv3 without its lock daemon, Lustre mounted without
`-o flock` (or `localflock`), a FUSE filesystem that does not implement them. There flock fails
with ENOLCK ("No locks available"), EOPNOTSUPP or ENOSYS.
That is a setup problem with a fix, so `flock` raises NoLocksError, a UserError naming the file
and the fix. A reader that only asks who holds a lock (`scaling status`) catches it and says it
cannot tell, rather than failing.

Others have locks that hold on each machine only: NFS mounted `nolock` or `local_lock=flock|all`,
Lustre mounted `localflock`. flock succeeds there, and processes on other machines do not see it
(on NFS otherwise, flock is a lock the server keeps, which every client sees). `node_local_locks`
reads that off the mount table, for the one lock meant to hold across machines: the driver's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re

from scaling.errors import UserError

# ENOTSUP is EOPNOTSUPP on Linux; ENOSYS: a FUSE filesystem that does not implement locks.
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

MOUNT_FIX = ("mount it with locks (NFS: with its lock daemon running; Lustre: "
             "-o flock), or move that folder to a filesystem that has them")


class NoLocksError(UserError):
    """The filesystem under a lock file does not support file locks (the message names the fix)."""


def flock(handle, operation: int, fix: str = MOUNT_FIX) -> None:
    """fcntl.flock(handle, operation); a filesystem without locks is a NoLocksError naming the file.
    Every other error is raised as it is: BlockingIOError (a LOCK_NB lock held elsewhere) among them."""
    try:
        fcntl.flock(handle, operation)
    except OSError as err:
        if err.errno not in NO_LOCKS:
            raise
        raise NoLocksError(f"{handle.name}: the filesystem under it does not support file locks "
                           f"({err.strerror or errno.errorcode.get(err.errno)}), which this tool "
                           f"needs there; {fix}") from None


MOUNTS = "/proc/self/mounts"
# Mount options under which flock excludes only the processes of one machine (nfs(5), Lustre's
# `localflock`); NFSv4 ignores nolock and local_lock, so an nfs4 mount never matches.
NODE_LOCAL_OPTIONS = {"nfs": ("nolock", "local_lock=flock", "local_lock=all"), "lustre": ("localflock",)}


def node_local_locks(path) -> str | None:
    """The mount under `path` when its flock holds on this machine only, described ("nfs at
    /shared, mounted nolock"); None otherwise, or where the mount table cannot be read."""
    try:
        with open(MOUNTS) as handle:
            table = handle.read()
    except OSError:
        return None
    return local_lock_mount(os.path.realpath(path), table)


def local_lock_mount(path: str, mounts_table: str) -> str | None:
    """node_local_locks for an absolute path and a mount table's text (pure)."""
    mount = None  # (mount point, type, options) of the longest mount point above path
    for line in mounts_table.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 = " "
        inside = point == "/" or path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (mount is None or len(point) >= len(mount[0])):
            mount = (point, fields[2], fields[3].split(","))
    if mount is None:
        return None
    point, fstype, options = mount
    local = [o for o in NODE_LOCAL_OPTIONS.get(fstype, ()) if o in options]
    return f"{fstype} at {point}, mounted {local[0]}" if local else None
