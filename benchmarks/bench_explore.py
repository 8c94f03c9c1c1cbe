"""Exhaustive DPOR, kvmlock.explore side by side with the PyPI package ``frontrun``.

Two programs, each explored to exhaustion by both tools in this one process:

* ``counter 3x3``: three tasks each doing three increments of one counter under one lock.
  Its Mazurkiewicz traces are the orders of the nine critical sections: 9!/(3!)^3 = 1680.
* ``lost update``: two tasks each doing ``v = x; x = v + 1`` without a lock.

frontrun is run twice: with its defaults (preemption bound 2, I/O detection on), and fully
exhaustive (no preemption bound, I/O detection off, its fastest setting). kvmlock runs with
lockdep validating every acquire, as it does by default, and without shrinking (the benchmark
counts explorations, not failure reports). Printed: executions, seconds, executions per
second, and kvmlock's rate as a multiple of frontrun's.

    pip install -e '.[bench]'      # frontrun==0.7.0
    python benchmarks/bench_explore.py
"""

from __future__ import annotations

import sys
import threading
import time

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


#: A tiny space is explored this many times over (by both tools alike), so that one timed
#: stretch lasts long enough for the shared machine's noise not to dominate its rate.
REPEAT = {"counter 3x3": 1, "lost update": 500}


def run_kvmlock(body, repeat: int) -> tuple[int, float]:
    if repeat > 1:  # one untimed warm-up exploration, as for frontrun
        explore.check(body, strategy="dpor", stop_on_first=False, shrink=False, progress=False)
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


def run_frontrun(which: str, exhaustive: bool, repeat: int) -> tuple[int, float]:
    import frontrun

    kw: dict = {"stop_on_first": False, "reproduce_on_failure": 0}
    if exhaustive:
        kw.update(preemption_bound=None, detect_io=False)

    def once():
        if which == "counter":
            return frontrun.explore(setup=_Counter, workers=_counter_worker, count=3,
                                    invariant=lambda s: s.v == 9, **kw)
        return frontrun.explore(setup=_Word, workers=_inc, count=2,
                                invariant=lambda s: s.v == 2, **kw)

    if which != "counter":
        once()  # untimed warm-up, as for kvmlock (the counter space is too slow to repeat)
    t0 = time.perf_counter()
    runs = 0
    for _ in range(repeat):
        runs += once().num_explored
    return runs, time.perf_counter() - t0


def main() -> int:
    rows = []
    ours = {}
    for name, body in (("counter 3x3", counter_body), ("lost update", lost_update_body)):
        n, dt = run_kvmlock(body, REPEAT[name])
        ours[name] = (n, dt)
        rows.append((name, "kvmlock dpor", n, dt))
    try:
        from frontrun._cooperative import patch_locks
    except ImportError:
        print("frontrun is not installed (pip install -e '.[bench]'): kvmlock figures only\n")
        theirs = {}
    else:
        patch_locks()  # what the frontrun CLI does before running a test
        theirs = {}
        for name, which in (("counter 3x3", "counter"), ("lost update", "lost")):
            for exhaustive, label in ((False, "frontrun dpor (defaults)"),
                                      (True, "frontrun dpor (exhaustive)")):
                n, dt = run_frontrun(which, exhaustive, REPEAT[name])
                theirs[(name, label)] = (n, dt)
                rows.append((name, label, n, dt))

    print("executions are per exploration; a small space is explored repeatedly "
          f"({', '.join(f'{k} x{v}' for k, v in REPEAT.items())}) and timed in total\n")
    print(f"{'program':<12} {'explorer':<28} {'executions':>10} {'seconds':>8} "
          f"{'exec/s':>9} {'kvmlock speedup':>16}")
    for name, tool, n, dt in rows:
        n_one = n // REPEAT[name]
        rate = n / dt if dt else float("inf")
        if tool.startswith("frontrun"):
            on, odt = ours[name]
            speed = f"{(on / odt) / rate:,.1f}x"
        else:
            speed = ""
        print(f"{name:<12} {tool:<28} {n_one:>10} {dt:>8.2f} {rate:>9,.0f} {speed:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
