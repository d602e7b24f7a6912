"""The driver lease of a run store at a URL (scaling/lease.py), on fsspec's in-memory filesystem.

Another machine's driver is a record written as that machine would write it; the clock and the
settle wait are injected where a test needs them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest

from scaling import lease as lease_mod
from scaling.errors import UserError
from scaling.lease import (FREE, LEASE_FILE, LEASE_S, LIVE, UNSURE, Holder, Lease, LeaseLost,
                           lease_state, read_holder)
from scaling.storage import location
from scaling.store import RunStore


@pytest.fixture
def memory_root(monkeypatch):
    monkeypatch.setattr(lease_mod, "SETTLE_S", 0.0)
    monkeypatch.setattr(lease_mod, "WATCH_S", 0.0)
    root = f"memory://isoflop-lease-{uuid.uuid4().hex[:8]}"
    yield root
    location(root).rmtree()


def write_record(root: str, holder: Holder, sweep: str = "demo") -> None:
    (location(root) / sweep / LEASE_FILE).write_text(json.dumps(holder.__dict__))


def other_machine(renewed_s_ago: float) -> Holder:
    now = time.time()
    return Holder("node-7", 4242, "their-token", now - 3600, now - renewed_s_ago)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


ME = Holder("head", 100, "mine", 0.0, 0.0)


@pytest.mark.parametrize("holder, now, state", [
    (None, 1000.0, FREE),
    (Holder("head", 100, "mine", 0.0, 990.0), 1000.0, FREE),  # our own record
    (Holder("node-7", 5, "theirs", 0.0, 1000.0 - LEASE_S), 1000.0, LIVE),  # renewed just in time
    (Holder("node-7", 5, "theirs", 0.0, 999.0 - LEASE_S), 1000.0, UNSURE),  # lapsed by our clock
    (Holder("node-7", 5, "theirs", 0.0, 1004.0), 1000.0, LIVE),  # a few seconds ahead of ours
    (Holder("node-7", 5, "theirs", 0.0, 1600.0), 1000.0, UNSURE),  # its clock is 10 min ahead
    (Holder("head", 5, "theirs", 0.0, 999.0), 1000.0, FREE),  # this machine, its process is gone
    (Holder("head", 100, "theirs", 0.0, 999.0 - LEASE_S), 1000.0, FREE),  # this machine's, lapsed
    (Holder("head", 100, "theirs", 0.0, 999.0), 1000.0, LIVE),  # this machine's, live
])
def test_who_holds_the_lease(holder, now, state):
    assert lease_state(holder, ME, now, pid_alive=lambda pid: pid == 100) == state


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


@pytest.mark.parametrize("their_clock_s", [-600.0, +600.0])
def test_a_live_driver_whose_clock_disagrees_keeps_its_sweep(memory_root, capsys, monkeypatch,
                                                             their_clock_s):
    """Its stamps look lapsed (or from the future) by our clock, but it renews while we watch."""
    monkeypatch.setattr(lease_mod, "WATCH_S", LEASE_S)  # the clock and the sleep are ours here
    root = location(memory_root) / "demo"
    ours = [1000.0]
    stamp = lambda: Holder("node-7", 4242, "their-token", 0.0, ours[0] + their_clock_s)

    def watch(seconds):  # our clock moves on; theirs renews meanwhile
        ours[0] += seconds
        write_record(memory_root, stamp())

    write_record(memory_root, stamp())
    lease = Lease(root, clock=lambda: ours[0], sleep=watch)
    with pytest.raises(UserError, match=r"pid 4242 on node-7 .*renewed its lease while this driver "
                                        r"watched, yet its stamp is 600 s off .*NTP"):
        lease.acquire()
    assert "watching it for" in capsys.readouterr().err
    assert read_holder(root / LEASE_FILE).token == "their-token"


def test_a_dead_driver_whose_clock_ran_ahead_lets_go_after_the_watch(memory_root, monkeypatch):
    monkeypatch.setattr(lease_mod, "WATCH_S", LEASE_S)
    root = location(memory_root) / "demo"
    ahead = time.time() + 3600
    write_record(memory_root, Holder("node-7", 4242, "their-token", ahead, ahead))
    watched = []
    lease = Lease(root, sleep=watched.append)
    lease.acquire()
    assert watched == [LEASE_S, 0.0] and read_holder(root / LEASE_FILE).token == lease.me.token


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


def test_a_driver_finds_out_at_once_when_it_wakes_from_a_stall(memory_root):
    """After a stall past LEASE_S, check() reads the record itself (the runner calls it before it
    writes a status): still ours, it renews; another driver's, or deleted (taken and let go), the
    driver stands down."""
    root = location(memory_root) / "demo"
    now = [1000.0]
    lease = Lease(root, clock=lambda: now[0])
    lease.acquire()
    now[0] += LEASE_S + 30  # a suspended laptop; nobody took the sweep
    lease.check()
    assert read_holder(root / LEASE_FILE).renewed_at == now[0]

    now[0] += LEASE_S + 30
    write_record(memory_root, other_machine(renewed_s_ago=0))
    with pytest.raises(LeaseLost, match=r"this driver's lease lapsed .* another `scaling run` took "
                                        r"the sweep \(pid 4242 on node-7 .*stopped its runs"):
        lease.check()
    with pytest.raises(LeaseLost):  # and from then on
        lease.check()

    again = Lease(root, clock=lambda: now[0])
    (root / LEASE_FILE).unlink()
    again.acquire()
    (root / LEASE_FILE).unlink()  # another driver took it while we slept, and finished
    now[0] += LEASE_S + 1
    with pytest.raises(LeaseLost, match="its record was deleted"):
        again.check()


class _Hanging:
    """An executor of two slots whose runs never finish; calls `when_full` once both are taken,
    and records what was cancelled."""

    def __init__(self, when_full):
        self.when_full, self.submitted, self.cancelled, self.waits = when_full, [], [], 0

    def fits(self, spec, running):
        if len(running) < 2:
            return True
        self.when_full()
        return False

    def submit(self, spec, run_dir):
        self.submitted.append(spec.run_id)
        return spec.run_id

    def wait(self, handles, timeout_s):
        self.waits += 1
        assert self.waits < 400, "the runner never stood down"
        time.sleep(timeout_s)
        return []

    def cancel(self, handles):
        self.cancelled.extend(handles)


def test_a_driver_whose_sweep_was_taken_over_stops_its_runs_and_writes_nothing(memory_root,
                                                                               monkeypatch):
    """The renewing thread finds another driver's record; the runner cancels its runs in flight and
    leaves every status and the results table to the other driver."""
    from pathlib import Path

    from scaling.grid import expand
    from scaling.runner import run_sweep
    from scaling.sweepfile import parse_sweep, read_yaml

    monkeypatch.setattr(lease_mod, "RENEW_S", 0.05)
    raw = read_yaml(Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml")
    sweep = parse_sweep({**raw, "output_dir": memory_root})
    specs, store = list(expand(sweep).runs), RunStore(memory_root, sweep.name)
    executor = _Hanging(when_full=lambda: write_record(memory_root, other_machine(renewed_s_ago=0),
                                                       sweep.name))
    with store.driving():
        with pytest.raises(LeaseLost, match="pid 4242 on node-7"):
            run_sweep(specs, store, executor, poll_s=0.01)
    assert executor.cancelled == executor.submitted and len(executor.submitted) == 2
    assert all(store.read_status(rid)["state"] == "running" for rid in executor.submitted)
    assert not (store.root / "results.parquet").exists()
    assert read_holder(store.root / LEASE_FILE).token == "their-token"  # left to its owner


@pytest.mark.parametrize("renewed_s_ago, said", [(300.0, r"last renewed 30\d s ago"),
                                                 (-600.0, r"stamped 60\d s in the future")])
def test_status_does_not_call_a_run_interrupted_when_the_lease_is_unsure(memory_root, tmp_path, capsys,
                                                                         renewed_s_ago, said):
    """Another machine's record that looks lapsed (or from the future) by this clock: its driver
    died, or its clock is off. `scaling status` cannot watch for a minute, so it says so."""
    from scaling.cli import main
    from scaling.sweepfile import load_plan
    from tests.scaling.test_cli import _smoke_in

    sweep = _smoke_in(tmp_path, output_dir=memory_root)
    _, plan = load_plan(sweep)
    run_id = plan.runs[0].run_id
    store = RunStore(memory_root, "smoke")
    store.write_status(run_id, "running", attempts=1)
    write_record(memory_root, other_machine(renewed_s_ago), sweep="smoke")
    assert store.driver() is None
    assert re.fullmatch(f"pid 4242 on node-7, {said} by this machine's clock", store.unsure_driver())
    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"interrupted?  1      -         -       {run_id}" in out
    assert re.search(f"the store's lease names a driver, pid 4242 on node-7, {said} by this machine's "
                     "clock: it died, or its machine's clock differs from this one's", out)
    assert "no driver: rerun" not in out
