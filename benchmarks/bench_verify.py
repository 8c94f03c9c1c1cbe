"""`kvmlock verify`'s CPU time with the collector at Python's own pace and once per execution.

Runs the chosen scenarios (default: the two with the biggest models per execution) in this
process, taking turns: each round explores them once with the first-generation threshold left
at Python's default during executions, and once as ``explore/gcpace.py`` sets it. Printed: CPU
time and the collector's own time per turn (``gc.callbacks``), the executions explored (the
same in both, or the comparison is void), and the ratio of the medians, after a first turn
that warms up. ``--timeout`` is the
per-scenario bound passed to verify: high by default so that no scenario is cut short by the
clock on a loaded machine.

    python benchmarks/bench_verify.py [--rounds N] [NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import time

from kvmlock.cli import main as kvmlock_main
from kvmlock.explore import gcpace

DEFAULT = ["fast_pf.aba.correct", "hardware.many_vms_two_hotplugs.correct"]


class GcClock:
    """CPU time spent inside the collector, from its start/stop callbacks."""

    def __init__(self) -> None:
        self.total = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            self.total += time.process_time() - self._t0


def turn(names: list[str], timeout: float, paced: bool, clock: GcClock) -> tuple[float, float, int]:
    """One exploration of ``names``: (CPU s, collector CPU s, executions)."""
    saved = gcpace.THRESHOLD
    if not paced:
        gcpace.THRESHOLD = 0  # (hold() then leaves the program's threshold as it is)
    out = io.StringIO()
    gc.collect()
    g0, c0 = clock.total, time.process_time()
    try:
        with contextlib.redirect_stdout(out):
            kvmlock_main(["verify", "--json", "--timeout", str(timeout), *names])
    finally:
        gcpace.THRESHOLD = saved
    cpu, in_gc = time.process_time() - c0, clock.total - g0
    return cpu, in_gc, sum(r["executions"] for r in json.loads(out.getvalue()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)
    clock = GcClock()
    runs: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    turn(args.names, args.timeout, True, clock)  # warm: imports, lockdep's classes, records
    for _ in range(args.rounds):
        for paced in (False, True):
            runs[paced].append(turn(args.names, args.timeout, paced, clock))
    execs = {r[2] for rs in runs.values() for r in rs}
    print(f"scenarios: {' '.join(args.names)}; executions per turn: "
          f"{', '.join(str(e) for e in sorted(execs))}" + ("" if len(execs) == 1 else
                                                          " (DIFFERENT: comparison void)"))
    print(f"{'collector':<28} {'CPU s (median)':>15} {'in the collector':>17}  turns")
    med = {}
    for paced, label in ((False, "at Python's pace"), (True, "once per execution")):
        cpu = statistics.median(r[0] for r in runs[paced])
        in_gc = statistics.median(r[1] for r in runs[paced])
        med[paced] = cpu
        turns = " ".join(f"{r[0]:.2f}" for r in runs[paced])
        print(f"{label:<28} {cpu:>15.2f} {in_gc:>17.2f}  {turns}")
    print(f"ratio: {med[False] / med[True]:.2f}x less CPU time with the collector once per "
          f"execution ({args.rounds} rounds, each taking both turns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
