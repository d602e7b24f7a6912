"""Processes of one Ray session, for tests that start Ray and must leave nothing behind."""

from __future__ import annotations

import time

import psutil


def ray_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes whose command line names the session folder (GCS, raylets, agents) and all their
    descendants (workers, Ray Train actors, fork servers, trainings), whose command lines do not."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if temp_dir in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def kill_all(procs) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def poll_until(predicate, timeout: float, poll: float):
    """predicate()'s first truthy value within timeout seconds, else its value at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return predicate()
