"""Live progress of a sweep: runs done / running / failed, and an ETA from FLOPs done vs total.

On a terminal it is one live line (rich); in a log (CI, nohup) each event is printed as a line.
"""

from __future__ import annotations

import sys
import time


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours}h{minutes:02d}m" if hours else f"ETA {minutes}m{secs:02d}s"


class SweepProgress:
    def __init__(self, sweep_name: str, live: bool | None = None):
        self.name = sweep_name
        self.start = time.monotonic()
        self.flops_at_start: float | None = None
        self.live = sys.stdout.isatty() if live is None else live
        self._console = None
        self._status = None
        if self.live:
            from rich.console import Console

            self._console = Console()
            self._status = self._console.status("")
            self._status.start()

    def line(self, done, running, failed, total, flops_done, flops_total) -> str:
        if self.flops_at_start is None:
            self.flops_at_start = flops_done
        elapsed = time.monotonic() - self.start
        gained = flops_done - self.flops_at_start
        eta = elapsed * (flops_total - flops_done) / gained if gained > 0 else None
        share = 100 * flops_done / flops_total if flops_total else 100
        return (f"[{self.name}] {done}/{total} done, {running} running, {failed} failed | "
                f"FLOPs {share:.0f}% | {format_eta(eta)} | {elapsed:.0f}s")

    def update(self, *, done, running, failed, total, flops_done, flops_total, event=None):
        text = self.line(done, running, failed, total, flops_done, flops_total)
        if self.live:
            if event:
                self._console.print(event)
            self._status.update(text)
        elif event:
            print(f"{text} | {event}", flush=True)

    def close(self):
        if self._status is not None:
            self._status.stop()
