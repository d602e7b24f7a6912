"""The driver lease of a run store at a URL: one `scaling run` per sweep, across machines.

A local store is guarded by an flock (scaling/store.py), which the kernel drops when its process
dies. An object store has no lock, and the flock of a URL store is on the driver's machine, so two
drivers on two machines would both train the sweep, into the same run folders. The lease is a
record in the store, `<sweep>/driver.json`, that the driver renews every RENEW_S seconds:

- a driver starts only if the record is absent, its own, or lapsed: not renewed for LEASE_S
  seconds (its driver died or lost the network), or written on this machine by a process that is
  gone (a rerun after a crash here need not wait);
- the record's stamps are the writer's clock, which need not agree with the reader's. So a record
  that looks lapsed (or stamped in the future) by the reader's clock is not taken on that alone:
  the reader watches it for LEASE_S by its own clock, and takes it only if it was not renewed in
  that time. A skewed clock can then only delay a takeover, never let two drivers in;
- it writes its own record, waits SETTLE_S and reads it back: of two drivers that started within
  that window, only the one whose write landed last goes on (an object store's put is atomic and
  a read after it sees it);
- at exit it deletes the record if it is still its own;
- a driver that finds its record replaced (it stalled past LEASE_S while alive: a suspended
  laptop, a frozen VM, and another driver took the sweep) stands down: `check` raises LeaseLost,
  the runner stops the runs it has in flight and writes nothing more to the store, since the
  other driver now owns every run's status (scaling/runner.py).

Decisions are pure functions of the record and the clock (`lease_state`); the watch is in
`Lease.acquire`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from scaling.errors import UserError

LEASE_FILE = "driver.json"
LEASE_S = 60.0  # a record not renewed for this long has lapsed
RENEW_S = 15.0  # four renewals per lease: a slow store or a busy driver misses one, not the lease
SETTLE_S = 2.0  # wait after writing, before reading back (two drivers starting together)
WATCH_S = LEASE_S  # a record unchanged this long by the reader's own clock has lapsed
FUTURE_S = 5.0  # a record stamped further ahead of the reader's clock than this: clocks disagree

FREE, LIVE, UNSURE = "free", "live", "unsure"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str  # unique per driver process and start: tells our record from another's
    since: float  # unix seconds, the holder's clock
    renewed_at: float

    @classmethod
    def this_process(cls, now: float) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Holder":
        return cls(str(record["host"]), int(record["pid"]), str(record["token"]),
                   float(record["since"]), float(record["renewed_at"]))

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on {self.host} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}, "
                f"lease renewed {max(0.0, now - self.renewed_at):.0f} s ago")

    def seen_at(self, now: float) -> str:
        """'pid N on HOST, last renewed A s ago (or: stamped A s in the future) by this machine's
        clock': what a reader on another machine can say of the record without trusting its clock."""
        age_s = now - self.renewed_at
        when = (f"last renewed {age_s:.0f} s ago" if age_s >= 0 else
                f"stamped {-age_s:.0f} s in the future")
        return f"pid {self.pid} on {self.host}, {when} by this machine's clock"


def lease_state(holder: Holder | None, me: Holder, now: float,
                pid_alive: Callable[[int], bool]) -> str:
    """FREE: no record, our own, or this machine's that lapsed or whose process is gone; LIVE:
    another driver's, renewed within LEASE_S by the reader's clock (`now`); UNSURE: another
    machine's that looks lapsed, or stamped in the future, by that clock: the writer's clock may
    disagree, so only watching the record tells (module docstring)."""
    if holder is None or holder.token == me.token:
        return FREE
    age_s = now - holder.renewed_at
    if holder.host == me.host:  # one clock: its age is true
        return LIVE if pid_alive(holder.pid) and age_s <= LEASE_S else FREE
    return LIVE if -FUTURE_S <= age_s <= LEASE_S else UNSURE


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def read_holder(path) -> Holder | None:
    """The record at `path` (a RemotePath), or None when absent or unreadable (a torn record
    cannot happen on an object store; a hand-edited one is treated as absent)."""
    try:
        return Holder.from_record(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _write(path, holder: Holder) -> None:
    path.write_text(json.dumps(holder.__dict__, indent=2))


def busy(root, holder: Holder, now: float, skew: str = "") -> UserError:
    return UserError(f"{root}: another `scaling run` is driving this sweep ({holder.describe(now)}"
                     f"{skew}); wait for it, or stop it, then rerun (finished runs are kept). A "
                     f"driver that died lets go {LEASE_S:.0f} s after its last renewal")


class LeaseLost(UserError):
    """Another driver took over this driver's sweep (module docstring)."""


def lost(root, holder: Holder | None, now: float) -> LeaseLost:
    who = holder.describe(now) if holder is not None else "its record was deleted"
    return LeaseLost(f"{root}: this driver's lease lapsed (not renewed for over {LEASE_S:.0f} s: was "
                     f"this machine suspended or cut off?) and another `scaling run` took the sweep "
                     f"({who}); this driver stopped its runs and wrote nothing more. Finished runs "
                     f"are kept; follow the sweep with `scaling status`")


class Lease:
    """Acquire with `acquire()`, then renew in a daemon thread until `release()`; `check()` raises
    LeaseLost once a renewal found another driver's record."""

    def __init__(self, root, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.root, self.path = root, root / LEASE_FILE
        self.clock, self.sleep = clock, sleep
        self.me = Holder.this_process(clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: LeaseLost | None = None  # set by the renewing thread, raised by check()

    def acquire(self) -> None:
        """Take the lease or raise UserError naming its live holder."""
        current = read_holder(self.path)
        state = lease_state(current, self.me, self.clock(), pid_alive)
        if state == LIVE:
            raise busy(self.root, current, self.clock())
        if state == UNSURE:
            self._watch(current)
        _write(self.path, self.me)
        self.sleep(SETTLE_S)
        current = read_holder(self.path)
        if current is None or current.token != self.me.token:
            if current is None:
                raise UserError(f"{self.root}: the driver lease {self.path} vanished as it was "
                                "written; another driver is starting, or the store drops writes")
            raise busy(self.root, current, self.clock())

    def _watch(self, seen: Holder) -> None:
        """Raise `busy` if the record `seen` is renewed within WATCH_S of this machine's clock:
        its stamps say it lapsed, but the writer's clock may run behind ours."""
        print(f"note: {self.root}: the driver lease of {seen.seen_at(self.clock())}; watching it for "
              f"{WATCH_S:.0f} s before taking the sweep, since machines' clocks can disagree",
              file=sys.stderr)
        self.sleep(WATCH_S)
        current = read_holder(self.path)
        if current is None or current == seen:
            return
        now = self.clock()
        skew = "" if lease_state(current, self.me, now, pid_alive) == LIVE else (
            f"; it renewed its lease while this driver watched, yet its stamp is "
            f"{abs(now - current.renewed_at):.0f} s off this machine's clock: set both machines' "
            f"clocks by NTP")
        raise busy(self.root, current, now, skew)

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="driver-lease", daemon=True)
        self._thread.start()

    def renew_once(self) -> bool:
        """Renew our record; False when another driver's record replaced it (ours had lapsed), and
        from then on `check()` raises."""
        current, now = read_holder(self.path), self.clock()
        taken = current is not None and current.token != self.me.token
        if taken or (current is None and now - self.me.renewed_at > LEASE_S):  # taken, maybe let go
            self._lost = lost(self.root, current, now)
            return False
        self.me = Holder(**{**self.me.__dict__, "renewed_at": self.clock()})
        _write(self.path, self.me)
        return True

    def check(self) -> None:
        """Raise LeaseLost if another driver took the sweep (the runner stands down). After a
        stall past LEASE_S this reads the record itself rather than wait up to RENEW_S for the
        renewing thread: the runner calls it before it writes a run's status."""
        if self._lost is None and self.clock() - self.me.renewed_at > LEASE_S:
            try:
                self.renew_once()
            except Exception:  # noqa: BLE001 - the store is unreachable: the renewing thread warns
                pass
        if self._lost is not None:
            raise self._lost

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if not self.renew_once():
                    return
            except Exception as err:  # a store hiccup: the next renewal may succeed
                print(f"warning: {self.root}: could not renew the driver lease ({err})", file=sys.stderr)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=RENEW_S)
        current = read_holder(self.path)
        if current is not None and current.token == self.me.token:
            self.path.unlink(missing_ok=True)


def live_holder(root, now: float | None = None) -> str | None:
    """Who holds the lease of the store at `root` now ("pid N on HOST since T, ..."), or None."""
    state, holder, now = _read_state(root, now)
    return holder.describe(now) if state == LIVE else None


def unsure_holder(root, now: float | None = None) -> str | None:
    """For a record that is UNSURE by this machine's clock (another machine's, that looks lapsed or
    is stamped in the future), what a reader can say of it without watching; else None."""
    state, holder, now = _read_state(root, now)
    return holder.seen_at(now) if state == UNSURE else None


def _read_state(root, now: float | None) -> tuple[str, Holder | None, float]:
    now = time.time() if now is None else now
    holder = read_holder(root / LEASE_FILE)
    nobody = Holder(socket.gethostname(), -1, "", 0.0, 0.0)  # a reader: dead pids here let go
    return lease_state(holder, nobody, now, pid_alive), holder, now
