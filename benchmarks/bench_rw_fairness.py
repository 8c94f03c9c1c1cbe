"""Do readers and writers of the real-thread RWLock and RWSemaphore both make progress?

Run: ``python benchmarks/bench_rw_fairness.py [--seconds S]``. Two loads, each for S seconds
per lock type, counting the sections each side completed in this one run:

* slow writers: two writer threads that each hold the lock 1 ms, back to back, and one reader;
* mixed: four readers and four writers, all with short sections, in a tight loop.

Without hand-off to waiting readers, a writer that unlocks and locks again at once keeps the
lock from readers while other writers keep queueing. The target: the readers complete a
share of sections of the same order as the writers (reads/writes >= 0.1 in both loads).
"""

from __future__ import annotations

import argparse
import threading
import time

from kvmlock import lockdep
from kvmlock.sync import RWLock, RWSemaphore


def run_load(rw: RWLock | RWSemaphore, readers: int, writers: int, hold_s: float,
             seconds: float) -> tuple[int, int]:
    stop = threading.Event()
    counts = {"r": 0, "w": 0}
    count_lock = threading.Lock()

    def reader() -> None:
        n = 0
        while not stop.is_set():
            rw.read_lock()
            n += 1
            rw.read_unlock()
        with count_lock:
            counts["r"] += n

    def writer() -> None:
        n = 0
        while not stop.is_set():
            rw.write_lock()
            if hold_s:
                time.sleep(hold_s)
            n += 1
            rw.write_unlock()
        with count_lock:
            counts["w"] += n

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    threads += [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return counts["r"], counts["w"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    opts = ap.parse_args()
    lockdep.disable()  # the primitives' scheduling is measured, not the validator
    print(f"{'load':<38}{'lock':<13}{'reads':>10}{'writes':>10}{'reads/writes':>14}")
    worst = float("inf")
    for label, readers, writers, hold in (("slow writers (2 x 1 ms) + 1 reader", 1, 2, 0.001),
                                          ("mixed, 4 readers + 4 writers", 4, 4, 0.0)):
        for cls in (RWLock, RWSemaphore):
            r, w = run_load(cls(f"bench.{cls.__name__}"), readers, writers, hold, opts.seconds)
            ratio = r / w if w else float("inf")
            worst = min(worst, ratio)
            print(f"{label:<38}{cls.__name__:<13}{r:>10,}{w:>10,}{ratio:>14.2f}")
    print(f"lowest reads/writes: {worst:.2f}   (target >= 0.1: readers are not starved)")


if __name__ == "__main__":
    main()
