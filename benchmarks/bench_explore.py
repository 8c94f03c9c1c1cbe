"""Exhaustive DPOR, kvmlock.explore side by side with the PyPI package ``frontrun``.

Two programs, each explored to exhaustion by both tools in this one process:

* ``counter 3x3``: three tasks each doing three increments of one counter under one lock.
  Its Mazurkiewicz traces are the orders of the nine critical sections: 9!/(3!)^3 = 1680.
* ``lost update``: two tasks each doing ``v = x; x = v + 1`` without a lock.

frontrun is run twice: with its defaults (preemption bound 2, I/O detection on), and fully
exhaustive (no preemption bound, I/O detection off, its fastest setting). kvmlock runs with
lockdep validating every acquire, as it does by default, and without shrinking (the benchmark
counts explorations, not failure reports).

The machine is shared and noisy, so the tools take turns: each round times every tool once, one
after the other, and the figures are medians over the rounds. Printed per tool: executions per
exploration, median executions per second, and kvmlock's rate as a multiple of the tool's
(the median over rounds of the ratio measured within one round, and its range).

    pip install -e '.[bench]'      # frontrun==0.7.0
    python benchmarks/bench_explore.py
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64, Mutex


# ---------------------------------------------------------------------------- kvmlock bodies
def counter_body() -> None:
    m = Mutex("counter_lock")
    c = [0]

    def worker() -> None:
        for _ in range(3):
            with m:
                c[0] += 1

    ts = [spawn(worker) for _ in range(3)]
    for t in ts:
        t.join()
    assert c[0] == 9


def lost_update_body() -> None:
    x = Atomic64(0, name="x")

    def inc() -> None:
        v = x.load()
        x.store(v + 1)

    ts = [spawn(inc), spawn(inc)]
    for t in ts:
        t.join()
    assert x.peek() == 2


#: Rounds, and explorations per turn of (kvmlock, frontrun). The lost-update space is tiny, so
#: each turn explores it many times over, enough for a turn to last about half a second.
ROUNDS = {"counter 3x3": 3, "lost update": 7}
PER_ROUND = {"counter 3x3": (1, 1), "lost update": (1500, 70)}


def run_kvmlock(body, repeat: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    runs = 0
    for _ in range(repeat):
        res = explore.check(body, strategy="dpor", stop_on_first=False, shrink=False,
                            progress=False)
        assert res.exhausted
        runs += res.runs
    return runs, time.perf_counter() - t0


# ---------------------------------------------------------------------------- frontrun programs
class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.v = 0


def _counter_worker(s: _Counter) -> None:
    for _ in range(3):
        with s.lock:
            s.v += 1


class _Word:
    def __init__(self) -> None:
        self.v = 0


def _inc(s: _Word) -> None:
    v = s.v
    s.v = v + 1


def frontrun_runner(which: str, exhaustive: bool) -> Callable[[int], tuple[int, float]]:
    import frontrun

    kw: dict = {"stop_on_first": False, "reproduce_on_failure": 0}
    if exhaustive:
        kw.update(preemption_bound=None, detect_io=False)

    def once():
        if which == "counter 3x3":
            return frontrun.explore(setup=_Counter, workers=_counter_worker, count=3,
                                    invariant=lambda s: s.v == 9, **kw)
        return frontrun.explore(setup=_Word, workers=_inc, count=2,
                                invariant=lambda s: s.v == 2, **kw)

    def run(repeat: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        runs = 0
        for _ in range(repeat):
            runs += once().num_explored
        return runs, time.perf_counter() - t0

    return run


def _tools(name: str, body) -> dict[str, Callable[[int], tuple[int, float]]]:
    tools: dict[str, Callable[[int], tuple[int, float]]] = {
        "kvmlock dpor": lambda k: run_kvmlock(body, k)}
    try:
        from frontrun._cooperative import patch_locks
    except ImportError:
        return tools
    patch_locks()  # what the frontrun CLI does before running a test
    tools["frontrun dpor (defaults)"] = frontrun_runner(name, exhaustive=False)
    tools["frontrun dpor (exhaustive)"] = frontrun_runner(name, exhaustive=True)
    return tools


def main() -> int:
    programs = (("counter 3x3", counter_body), ("lost update", lost_update_body))
    have_frontrun = True
    print(f"{'program':<12} {'explorer':<28} {'executions':>10} {'exec/s':>9} "
          f"{'kvmlock speedup (range)':>24}")
    for name, body in programs:
        tools = _tools(name, body)
        have_frontrun = have_frontrun and len(tools) > 1
        k_ours, k_theirs = PER_ROUND[name]
        if name == "lost update":  # untimed warm-up of every tool
            for run in tools.values():
                run(1)
        execs: dict[str, int] = {}
        rates: dict[str, list[float]] = {t: [] for t in tools}
        for _ in range(ROUNDS[name]):
            for tool, run in tools.items():
                k = k_ours if tool == "kvmlock dpor" else k_theirs
                n, dt = run(k)
                execs[tool] = n // k
                rates[tool].append(n / dt)
        ours = rates["kvmlock dpor"]
        for tool in tools:
            rate = statistics.median(rates[tool])
            speed = ""
            if tool != "kvmlock dpor":
                ratios = [a / b for a, b in zip(ours, rates[tool], strict=True)]
                speed = (f"{statistics.median(ratios):,.1f}x ({min(ratios):,.1f}-"
                         f"{max(ratios):,.1f})")
            print(f"{name:<12} {tool:<28} {execs[tool]:>10} {rate:>9,.0f} {speed:>24}")
    print("\nmedians over rounds in which every tool takes one turn; explorations per turn "
          "(kvmlock, frontrun): " + ", ".join(f"{n}: {ROUNDS[n]} rounds of {PER_ROUND[n]}"
                                              for n in ROUNDS))
    if not have_frontrun:
        print("frontrun is not installed (pip install -e '.[bench]'): kvmlock figures only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
