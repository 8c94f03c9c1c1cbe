"""`kvmlock verify`'s CPU time on one core: this source tree against another, taking turns.

Each turn runs ``kvmlock verify --json`` in a child process pinned to one CPU, alternately from
this checkout's ``src`` and from ``--baseline DIR`` (the ``src`` directory of another version,
for example one unpacked by ``git archive BASE src | tar -x -C /tmp/base``), so both sides see
the same load.
Printed per side: the child's CPU time (user + system) per turn, the part of it spent in the
cyclic garbage collector (``gc.callbacks``), and the executions explored, which must be the same
on both sides or the comparison is void; then the ratio of the medians. ``--timeout`` is the
per-scenario bound passed to verify: high by default so that no scenario is cut short by the
clock on a loaded machine. Without ``--baseline`` only this tree is measured.

Two versions far apart have different scenario lists, and a scenario of both may explore a
different number of executions in each (the model changed under it). With ``--baseline`` a
first, untimed turn on each side lists every scenario's executions, and the timed turns run
only the scenarios both sides have and explore identically (same name, same executions); the
scenarios left out are named.

    python benchmarks/bench_verify.py [--baseline /tmp/base/src] [--rounds N] [--cpu K] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

#: Run in the child: verify's CPU time, the collector's share of it, the executions explored.
CHILD = r"""
import contextlib, gc, io, json, sys, time
from kvmlock.cli import main
in_gc = [0.0, 0.0]
def cb(phase, info):
    if phase == "start":
        in_gc[1] = time.process_time()
    else:
        in_gc[0] += time.process_time() - in_gc[1]
gc.callbacks.append(cb)
out = io.StringIO()
c0 = time.process_time()
with contextlib.redirect_stdout(out):
    try:
        main(["verify", "--json", *sys.argv[1:]])
    except SystemExit:  # (an older verify may exit with its verdict)
        pass
cpu = time.process_time() - c0
records = json.loads(out.getvalue())
print(json.dumps({"cpu": cpu, "gc": in_gc[0], "executions": sum(r["executions"] for r in records),
                  "met": all(r["met"] for r in records),
                  "per": {r["name"]: r["executions"] for r in records}}))
"""


def turn(src: str, names: list[str], timeout: float, cpu: int) -> dict:
    """One ``kvmlock verify`` from the ``kvmlock`` package under ``src``, on CPU ``cpu``."""
    env = dict(os.environ, PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", CHILD, "--timeout", str(timeout), *names],
                       env=env, capture_output=True, text=True, check=False,
                       preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    if p.returncode != 0:
        raise SystemExit(f"bench_verify: the run from {src} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def common(sides: list[tuple[str, str]], names: list[str], timeout: float,
           cpu: int) -> tuple[list[str], list[tuple[str, str]]]:
    """The scenarios (of ``names``, or all) that both sides have and explore with the same
    executions, from one untimed turn each; and the others, with why each is left out."""
    (_, base_src), (_, here_src) = sides
    base = turn(base_src, names, timeout, cpu)["per"]
    here = turn(here_src, names, timeout, cpu)["per"]
    same, left_out = [], []
    for name in sorted(set(base) | set(here)):
        if name not in base:
            left_out.append((name, "only in this tree"))
        elif name not in here:
            left_out.append((name, "only in the baseline"))
        elif base[name] != here[name]:
            left_out.append((name, f"executions {base[name]} in the baseline, {here[name]} here"))
        else:
            same.append(name)
    if not same:
        raise SystemExit("bench_verify: no scenario is explored identically by both versions")
    return same, left_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="scenarios (default: all of them)")
    ap.add_argument("--baseline", metavar="DIR", help="the src directory of another checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=0, help="the CPU both sides run on")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)
    sides = [("this tree", HERE)]
    if args.baseline:
        if not os.path.isdir(os.path.join(args.baseline, "kvmlock")):
            raise SystemExit(f"bench_verify: no kvmlock package in {args.baseline}")
        sides.insert(0, ("baseline", os.path.abspath(args.baseline)))
    names = list(args.names)
    if len(sides) == 2:
        names, left_out = common(sides, names, args.timeout, args.cpu)
        print(f"compared: {len(names)} scenarios that both versions have and explore "
              f"identically (same executions); left out: {len(left_out)}")
        if left_out:
            print("  compared: " + " ".join(names))
        only = {where: sum(why == f"only in {where}" for _, why in left_out)
                for where in ("the baseline", "this tree")}
        if left_out:
            print(f"  left out: {only['the baseline']} only in the baseline, "
                  f"{only['this tree']} only in this tree, and these explored differently:")
        for name, why in left_out:
            if not why.startswith("only in"):
                print(f"    {name} ({why})")
    runs: dict[str, list[dict]] = {label: [] for label, _ in sides}
    for _ in range(args.rounds):
        for label, src in sides:
            runs[label].append(turn(src, names, args.timeout, args.cpu))
    try:
        load = " (load average {:.1f} {:.1f} {:.1f})".format(*os.getloadavg())
    except OSError:
        load = ""
    execs = {r["executions"] for rs in runs.values() for r in rs}
    what = ("(the compared scenarios)" if len(sides) == 2
            else " ".join(args.names) or "(every scenario)")
    print(f"kvmlock verify {what}: on CPU {args.cpu}, "
          f"{args.rounds} rounds{load}")
    print(f"executions per turn: {', '.join(str(e) for e in sorted(execs))}"
          + ("" if len(execs) == 1 else " (DIFFERENT: comparison void)"))
    print(f"{'':<10} {'CPU s (median)':>15} {'in the collector':>17}  turns")
    med = {}
    for label, _src in sides:
        rs = runs[label]
        med[label] = statistics.median(r["cpu"] for r in rs)
        in_gc = statistics.median(r["gc"] for r in rs)
        turns = " ".join(f"{r['cpu']:.2f}" for r in rs)
        print(f"{label:<10} {med[label]:>15.2f} {in_gc:>17.2f}  {turns}")
    if len(sides) == 2:
        r = med["baseline"] / med["this tree"]
        print(f"ratio: {r:.2f}x less CPU time than the baseline" if r >= 1 else
              f"ratio: {1 / r:.2f}x MORE CPU time than the baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
