"""The ``kvmlock`` command: one entry point, each subcommand owned by the part it exercises."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Sequence

#: subcommand -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("kvmlock.scenarios.verify", "explore every scenario of the KVM locking model"),
    "run": ("kvmlock.kvm.workload", "boot the KVM model on real threads under lockdep"),
    "selftest": ("kvmlock.lockdep.selftest", "lockdep's locking self-test table"),
    "spec": ("kvmlock.spec.cli", "read a locking.rst-style document; check the model against it"),
    "splat": ("kvmlock.splat.cli", "read kernel lockdep reports; judge them against a document"),
    "lockdep": ("kvmlock.script", "run a Python script with its threading locks validated"),
    "explore": ("kvmlock.explore.cli", "run a test or function (FILE::NAME) under the explorer"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: kvmlock COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "kvmlock COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from kvmlock import __version__

        print(f"kvmlock {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"kvmlock: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print("kvmlock: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``kvmlock verify --list | head``): stop quietly, as a shell
        # tool killed by SIGPIPE would, instead of a traceback and a second error at exit
        # when Python flushes the dead pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
