"""The explorer's cost per visible operation, against a greenlet switch pair (there and back).

Exhaustive DPOR on the 3x3 counter (three tasks, three locked increments each: 1,680 traces,
40,320 steps with lockdep validating every acquire), as a multiple of the cheapest thing a
step must do: switch to another greenlet and back.

Two measures, from one run of this script:

* CPU time (``time.process_time``), best of ``--rounds``: quick, but on a loaded machine both
  sides are inflated by cache and scheduler noise, by different amounts;
* machine instructions (``--instructions``, needs valgrind): each side is run twice in a child
  process under ``valgrind --tool=cachegrind --cache-sim=no`` with different repeat counts, and
  the difference of the two counts divided by the difference of the work is the marginal cost
  (start-up and first-time costs cancel out). Instruction counts do not depend on the load.

    python benchmarks/bench_step.py [--rounds N] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench_explore import counter_body  # the same 3x3 counter the frontrun comparison runs
from greenlet import greenlet

from kvmlock import explore

STEPS = 40_320  # of one exhaustive DPOR exploration of the 3x3 counter


def explore_counter(times: int) -> int:
    steps = 0
    for _ in range(times):
        res = explore.check(counter_body, strategy="dpor", shrink=False)
        assert res.ok and res.exhausted and res.runs == 1680, res.headline()
        steps += res.steps
    return steps


def switch_pairs(n: int) -> None:
    main = greenlet.getcurrent()

    def other() -> None:
        while True:
            main.switch()

    g = greenlet(other)
    for _ in range(n):
        g.switch()


def cpu_ns(rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` CPU time per step and per switch pair, in ns."""
    explore_counter(1)  # warm: records, greenlet pool, lockdep's classes
    step = pair = float("inf")
    n = 200_000
    for _ in range(rounds):
        c0 = time.process_time()
        steps = explore_counter(1)
        step = min(step, (time.process_time() - c0) / steps * 1e9)
        c0 = time.process_time()
        switch_pairs(n)
        pair = min(pair, (time.process_time() - c0) / n * 1e9)
    return step, pair


def _instructions(*args: str) -> int:
    """Machine instructions of this script run as a child with ``args``, under cachegrind."""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={os.path.join(d, 'cg.out')}",
             sys.executable, __file__, *args],
            capture_output=True, text=True, check=True)
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def instructions() -> tuple[float, float]:
    """Marginal instructions per step and per switch pair."""
    one = _instructions("--child", "counter", "1")
    three = _instructions("--child", "counter", "3")
    step = (three - one) / (2 * STEPS)
    few = _instructions("--child", "switch", "100000")
    many = _instructions("--child", "switch", "300000")
    pair = (many - few) / 200_000
    return step, pair


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--instructions", action="store_true",
                    help="also count machine instructions under valgrind (slow)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        what, n = args.child[0], int(args.child[1])
        if what == "counter":
            explore_counter(n)
        else:
            switch_pairs(n)
        return 0
    print(f"python {sys.version.split()[0]}; counter 3x3, dpor, lockdep on: {STEPS:,} steps")
    step, pair = cpu_ns(args.rounds)
    print(f"CPU time (best of {args.rounds}): {step:,.0f} ns per step, {pair:,.0f} ns per "
          f"switch pair: {step / pair:.1f} switch pairs per step")
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("valgrind is not installed: no instruction counts")
            return 0
        step, pair = instructions()
        print(f"instructions: {step:,.0f} per step, {pair:,.0f} per switch pair: "
              f"{step / pair:.1f} switch pairs per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
