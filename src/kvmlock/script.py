"""``kvmlock lockdep SCRIPT``: validate an unmodified Python program's own threading locks.

The program runs in this process with ``threading.Lock()``/``RLock()`` instrumented, so one run
is enough for lockdep to see every order the program takes -- and to print a possible deadlock
whether or not this run happened to hit it. The exit status says whether anything was reported,
so the command drops into CI as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from collections.abc import Sequence

from kvmlock import lockdep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmlock lockdep",
        description="Run a Python script (or -m module) with its threading locks validated by "
        "lockdep; exit 1 when any report was made.",
    )
    p.add_argument("-m", dest="module", help="run a library module as a script, like python -m")
    p.add_argument("--json", metavar="FILE", help="also write the reports to FILE as JSON")
    p.add_argument("--quiet", action="store_true",
                   help="do not print splats as they happen, only the summary")
    p.add_argument("target", nargs="?", help="the script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    if not opts.module and not opts.target:
        print("kvmlock lockdep: name a script to run (or -m MODULE)", file=sys.stderr)
        return 2
    if opts.target and not opts.module and not os.path.isfile(opts.target):
        print(f"kvmlock lockdep: no such script: {opts.target}", file=sys.stderr)
        return 2

    lockdep.reset()
    lockdep.set_mode("collect" if opts.quiet else "warn")
    status = 0
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    with lockdep.instrument_threading():
        try:
            if opts.module:
                rest = ([opts.target] if opts.target else []) + opts.args
                sys.argv = [opts.module, *rest]
                runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
            else:
                sys.argv = [opts.target, *opts.args]
                sys.path.insert(0, os.path.dirname(os.path.abspath(opts.target)))
                runpy.run_path(opts.target, run_name="__main__")
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path

    found = lockdep.reports()
    st = lockdep.stats()
    print(
        f"kvmlock lockdep: {len(found)} report(s); {st.get('classes', 0)} lock classes, "
        f"{st.get('edges', 0)} dependencies, {st.get('chains', 0)} chains",
        file=sys.stderr,
    )
    if opts.quiet:
        for r in found:
            print(r, file=sys.stderr)
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump([r.to_dict() for r in found], fh, indent=2)
    return 1 if found else status
