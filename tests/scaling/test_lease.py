"""The driver lease of a run store at a URL (scaling/lease.py), on fsspec's in-memory filesystem.

Another machine's driver is a record written as that machine would write it; the clock and the
settle wait are injected where a test needs them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from scaling import lease as lease_mod
from scaling.errors import UserError
from scaling.lease import LEASE_FILE, LEASE_S, Holder, Lease, holder_is_live, read_holder
from scaling.storage import location
from scaling.store import RunStore


@pytest.fixture
def memory_root(monkeypatch):
    monkeypatch.setattr(lease_mod, "SETTLE_S", 0.0)
    root = f"memory://isoflop-lease-{uuid.uuid4().hex[:8]}"
    yield root
    location(root).rmtree()


def write_record(root: str, holder: Holder) -> None:
    (location(root) / "demo" / LEASE_FILE).write_text(json.dumps(holder.__dict__))


def other_machine(renewed_s_ago: float) -> Holder:
    now = time.time()
    return Holder("node-7", 4242, "their-token", now - 3600, now - renewed_s_ago)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


ME = Holder("head", 100, "mine", 0.0, 0.0)


@pytest.mark.parametrize("holder, now, live", [
    (None, 1000.0, False),
    (Holder("head", 100, "mine", 0.0, 990.0), 1000.0, False),  # our own record
    (Holder("node-7", 5, "theirs", 0.0, 1000.0 - LEASE_S), 1000.0, True),  # renewed just in time
    (Holder("node-7", 5, "theirs", 0.0, 999.0 - LEASE_S), 1000.0, False),  # lapsed
    (Holder("head", 5, "theirs", 0.0, 999.0), 1000.0, False),  # this machine, its process is gone
])
def test_who_holds_the_lease(holder, now, live):
    assert holder_is_live(holder, ME, now, pid_alive=lambda pid: pid == 100) is live


def test_a_driver_on_another_machine_is_refused_while_its_lease_is_live(memory_root):
    write_record(memory_root, other_machine(renewed_s_ago=5))
    store = RunStore(memory_root, "demo")
    with pytest.raises(UserError, match=r"another `scaling run` is driving this sweep \(pid 4242 on "
                                        r"node-7 since .*, lease renewed 5 s ago\).*lets go 60 s"):
        with store.driving():
            pass
    assert store.driver().startswith("pid 4242 on node-7")  # `scaling status` names it
    assert read_holder(store.root / LEASE_FILE).token == "their-token"  # untouched


@pytest.mark.parametrize("stale", ["lapsed", "dead here"])
def test_a_lapsed_or_dead_drivers_lease_is_taken_and_released(memory_root, stale):
    holder = other_machine(renewed_s_ago=LEASE_S + 1) if stale == "lapsed" else \
        Holder(socket.gethostname(), dead_pid(), "crashed", time.time(), time.time())
    write_record(memory_root, holder)
    store = RunStore(memory_root, "demo")
    assert store.driver() is None
    with store.driving():
        mine = read_holder(store.root / LEASE_FILE)
        assert (mine.host, mine.pid) == (socket.gethostname(), os.getpid())
    assert not (store.root / LEASE_FILE).exists()


def test_of_two_drivers_starting_together_the_last_write_wins(memory_root):
    root = location(memory_root) / "demo"
    rival = other_machine(renewed_s_ago=0)
    lease = Lease(root, sleep=lambda s: write_record(memory_root, rival))  # it writes as we settle
    with pytest.raises(UserError, match="pid 4242 on node-7"):
        lease.acquire()
    assert read_holder(root / LEASE_FILE).token == "their-token"


def test_renewal_moves_the_clock_and_stops_when_another_driver_took_over(memory_root):
    root = location(memory_root) / "demo"
    now = [1000.0]
    lease = Lease(root, clock=lambda: now[0])
    lease.acquire()
    now[0] += 20
    assert lease.renew_once() and read_holder(root / LEASE_FILE).renewed_at == 1020.0
    write_record(memory_root, other_machine(renewed_s_ago=0))  # ours lapsed and was taken
    assert not lease.renew_once()
    lease.release()  # leaves the other driver's record alone
    assert read_holder(root / LEASE_FILE).token == "their-token"
