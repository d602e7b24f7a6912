"""The `scaling` command: plan, train, run, status, fit, plot, pareto.

Each subcommand lives beside the code it drives and registers itself here; a user error (UserError)
prints one line `error: ...` and exits 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from scaling.errors import UserError

# Modules that add subcommands with `register(subparsers)`; imported lazily so `--help` stays fast.
COMMAND_MODULES = ("scaling.plan_cli", "trainers.cli", "scaling.run_cli", "analysis.cli",
                   "trainers.pareto_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaling",
        description="Iso-FLOP scaling-law studies of diffusion and autoregressive language models: "
                    "plan a sweep from YAML, train it on Ray + DeepSpeed, fit compute-optimal "
                    "frontiers, compare families.",
        epilog="Start with: scaling plan sweeps/demo.yaml   (then: scaling run sweeps/demo.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a subcommand not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that left is then caught below
        return code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a pipe of the command's own (a socket, a worker), not its reader
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # `scaling plan ... | head`: the reader left; what a shell reports (128 + SIGPIPE)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
