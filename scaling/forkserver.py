"""A fork server: pay the heavy imports once per slot, not once per run.

Every run needs a process of its own (DeepSpeed initialises once per process), but a fresh Python
process spends seconds importing torch, DeepSpeed, transformers and datasets before the first step,
and the demo's runs last tens of seconds. So each Ray slot keeps one "zygote": a plain subprocess
(no Ray, no gRPC threads, no CUDA context, no torch thread pool yet) that imports the training stack
once and then forks a child per run. The child starts with everything imported and nothing
initialised, trains, writes its records, and exits; the zygote reports how it ended.

Protocol (JSON lines): the slot writes {"spec_json", "run_dir", "cache_root"} to the zygote's stdin;
the zygote answers on its original stdout {"pid", "exit_code", "error", "traceback", "summary"}.
File descriptor 1 is pointed at /dev/null in the zygote and at run_dir/worker.log in each child, so
no library output can corrupt the protocol. A child killed by a signal has a negative exit code.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from scaling.staging import drop_scratch, scratch_dir

ATTEMPT_FILE = "attempt.json"  # the child's own account of how it ended
# Imported by the zygote so children start with them loaded; none of these starts threads or
# touches a device at import time.
PRELOAD = ("torch", "safetensors.torch", "transformers", "tokenizers", "datasets", "numpy",
           "trainers.train", "trainers.engine", "trainers.data", "trainers.backbone",
           "trainers.validate", "trainers.checkpoint", "trainers.families.ar",
           "trainers.families.mdlm", "trainers.families.duo", "trainers.families.esolm")


class RunFailedError(RuntimeError):
    """The run raised; the message is its one-line reason."""

    def __init__(self, message: str, traceback_text: str = ""):
        super().__init__(message)
        self.traceback_text = traceback_text


class WorkerDiedError(RuntimeError):
    """The run's process vanished (killed by a signal, out of memory) without reporting."""


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent goes, so no training process outlives its slot."""
    try:
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the slot's close() still ends them
        pass


def _preload() -> None:
    import importlib

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for name in PRELOAD:
        importlib.import_module(name)
    from trainers.dist import import_deepspeed

    import_deepspeed(world_size=2)  # import only; the one-process tweak is applied per child


def _child(request: dict) -> None:
    """Runs in the forked child: train, record how it ended, never return."""
    run_dir = scratch_dir(request["run_dir"])  # the run directory, or its scratch for a URL store
    code = 1
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = os.open(run_dir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        from scaling.worker import execute_run

        summary = execute_run(request["spec_json"], request["run_dir"], request.get("cache_root"))
        record, code = {"summary": summary}, 0
    except BaseException as exc:  # noqa: BLE001 - everything must be reported, then exit
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        name = type(exc).__name__
        record = {"error": f"{name}: {line}" if line and name not in line else (line or name),
                  "traceback": traceback.format_exc()}
    try:
        (run_dir / ATTEMPT_FILE).write_text(json.dumps(record, default=str))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer(pid: int, status: int, run_dir: Path) -> dict:
    reply = {"pid": pid, "exit_code": os.waitstatus_to_exitcode(status)}
    attempt = run_dir / ATTEMPT_FILE
    if attempt.exists():
        try:
            reply.update(json.loads(attempt.read_text()))
        except json.JSONDecodeError:
            pass
        attempt.unlink(missing_ok=True)
    return reply


def serve() -> None:
    """The zygote's main loop: one request per line, one forked child per request."""
    die_with_parent()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    _preload()
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        run_dir = scratch_dir(request["run_dir"])
        (run_dir / ATTEMPT_FILE).unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            sys.stdin.close()
            _child(request)
        _, status = os.waitpid(pid, 0)
        reply = _answer(pid, status, run_dir)
        if reply["exit_code"] == 0:
            drop_scratch(request["run_dir"])  # a URL store's: everything is in the store now
        protocol.write(json.dumps(reply) + "\n")


class Zygote:
    """The slot's handle on its fork server (started lazily, restarted if it dies)."""

    def __init__(self):
        self.proc = None

    def _start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "scaling.forkserver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1, start_new_session=True)
        ready = self.proc.stdout.readline()
        if not ready:
            raise WorkerDiedError(f"fork server exited at start (code {self.proc.wait()})")

    def run(self, spec_json: str, run_dir: str, cache_root: str | None) -> dict:
        """Train one run in a forked child; raise RunFailedError / WorkerDiedError on failure."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        request = {"spec_json": spec_json, "run_dir": run_dir, "cache_root": cache_root}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc = None
            raise WorkerDiedError("the fork server died during the run")
        reply = json.loads(line)
        code = reply["exit_code"]
        if code < 0:
            raise WorkerDiedError(f"worker process {reply['pid']} was killed by signal {-code}")
        if code != 0:
            raise RunFailedError(reply.get("error") or f"worker exited with code {code}",
                                 reply.get("traceback", ""))
        return reply.get("summary") or {}

    def abort(self) -> None:
        """Kill the zygote and any run it is training (they share its process group)."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a stuck zygote is killed instead
                self.abort()


if __name__ == "__main__":
    serve()
