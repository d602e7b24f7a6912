"""File locks (flock), and one line instead of a traceback where a filesystem has none.

flock keeps the processes that share a folder apart: one driver per sweep (scaling/store.py), one
tokenisation per prepared-data cache (trainers/data.py), one build of a node's checkpoint copy or
universal conversion (trainers/checkpoint.build_once), and no removal of a copy an attempt still
uses (scaling/staging.py). The kernel drops a lock when its process dies, however it dies.

Some shared filesystems have no locks: NFS mounted with `nolock` or without its lock daemon, Lustre
mounted without `-o flock`. There flock fails with ENOLCK ("No locks available") or EOPNOTSUPP.
That is a setup problem with a fix, so `flock` raises NoLocksError, a UserError naming the file
and the fix. A reader that only asks who holds a lock (`scaling status`) catches it and says it
cannot tell, rather than failing.
"""

from __future__ import annotations

import errno
import fcntl

from scaling.errors import UserError

# ENOTSUP is EOPNOTSUPP on Linux; ENOSYS: a FUSE filesystem that does not implement locks.
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

MOUNT_FIX = ("mount it with locks (NFS: without 'nolock', with its lock daemon running; Lustre: "
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
                        f"({err.strerror or errno.errorcode.get(err.errno)}), which this tool needs "
                        f"there; {fix}") from None
