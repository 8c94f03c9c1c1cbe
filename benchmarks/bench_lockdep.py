"""What lockdep costs: ns per lock/unlock on a cached chain, first-time chains, contention.

Run: ``python benchmarks/bench_lockdep.py [--quick]``. Every figure and ratio comes from this
one run (best of a few repeats), so the ratios compare like with like on the same machine; the
single-thread figures are CPU time of the measuring thread, the contended ones wall time.
Targets: validated cached acquire+release <= 3x a bare Python wrapper around threading.Lock;
8-thread contended throughput with validation >= 1/3 of without. Also measured (no target):
what one checked access of protected data costs -- a ``guarded_by`` field, a ``Guarded`` cell,
an ``RcuPointer`` read and publication (with and without a declared update side) -- next to a
plain attribute read, all made with the protection held.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from kvmlock import irq, lockdep
from kvmlock.sync import SRCU, Guarded, Mutex, RcuPointer, SpinLock, guarded_by

#: The single-thread loops are timed in the measuring thread's CPU time: on a shared machine a
#: preemption by another process then costs nothing, and the ratios between variants stay
#: put while the load changes (wall-clock best-of-9 still moved the depth-1 ratio by 2x).
_now = time.thread_time_ns


class BareWrapper:
    """The cheapest honest Python lock object: a class whose with-block calls a real lock."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> BareWrapper:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def ns_per_with(lock: object, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = _now()
        for _ in range(n):
            with lock:  # type: ignore[attr-defined]
                pass
        best = min(best, (_now() - t0) / n)
    return best


def ns_nested(outer: list[Mutex], lock: Mutex, n: int, repeats: int) -> float:
    """ns per with-block of ``lock`` while holding every lock in ``outer`` (chain depth)."""
    for o in outer:
        o.lock()
    try:
        return ns_per_with(lock, n, repeats)
    finally:
        for o in reversed(outer):
            o.unlock()


def ns_irqs_off(lock: object, n: int, repeats: int) -> float:
    """ns per with-block of ``lock`` taken with interrupts off: the state is part of the
    chain's key, so once seen this is the same cache lookup as in process context."""
    with irq.local_irq_save():
        return ns_per_with(lock, n, repeats)


def first_chain_ns(count: int) -> float:
    """Cost of a chain never seen before: each acquire is a new class under a held lock."""
    with lockdep.isolated():
        outer = Mutex("bench.outer")
        fresh = [Mutex(f"bench.fresh{i}") for i in range(count)]
        outer.lock()
        t0 = _now()
        for m in fresh:
            with m:
                pass
        dt = _now() - t0
        outer.unlock()
    return dt / count


class Plain:
    __slots__ = ("lock", "value")

    def __init__(self) -> None:
        self.lock = Mutex("bench.data_lock")
        self.value = 0


class Checked:
    value = guarded_by("lock")

    def __init__(self) -> None:
        self.lock = Mutex("bench.data_lock")
        self.value = 0


def ns_per_read(read, n: int) -> float:
    """ns per call of ``read`` (a loop of 10 calls per iteration, so the loop costs little)."""
    t0 = _now()
    for _ in range(n):
        read(); read(); read(); read(); read(); read(); read(); read(); read(); read()  # noqa: E702
    return (_now() - t0) / (10 * n)


def protected_reads(n: int, reps: int) -> dict[str, float]:
    """ns per access of protected data with its protection held, best of ``reps``."""
    plain, checked = Plain(), Checked()
    cell = Guarded(0, checked.lock, name="bench cell")
    srcu, ptr = SRCU("bench.srcu"), RcuPointer(0, name="bench->ptr")
    upd = Mutex("bench.update_side")
    declared = RcuPointer(0, name="bench->declared", read_side=srcu, update_side=upd)
    reads = {
        "plain attribute": (plain.lock, lambda: plain.value),
        "guarded_by field": (checked.lock, lambda: checked.value),
        "Guarded.get()": (checked.lock, cell.get),
        "RcuPointer.srcu_dereference": (srcu.read(), lambda: ptr.srcu_dereference(srcu)),
        "RcuPointer.assign, no update side declared": (upd, lambda: ptr.assign(1)),
        "RcuPointer.assign, update_side declared": (upd, lambda: declared.assign(1)),
    }
    best = dict.fromkeys(reads, float("inf"))
    for _ in range(reps):
        for label, (held, read) in reads.items():
            with held:
                best[label] = min(best[label], ns_per_read(read, n))
    return best


def contended_ops_per_s(threads: int, per_thread: int, validate: bool) -> float:
    shared = Mutex("bench.shared")
    outers = [Mutex("bench.per_thread") for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(outer: Mutex) -> None:
        start.wait()
        for _ in range(per_thread):
            with outer:
                with shared:
                    pass

    was_on = lockdep.enabled()
    if validate:
        lockdep.enable()
    else:
        lockdep.disable()
    try:
        ts = [threading.Thread(target=work, args=(o,)) for o in outers]
        for t in ts:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
    finally:
        if was_on:
            lockdep.enable()
    return threads * per_thread / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a few iterations: checks that the script runs; figures mean little")
    args = ap.parse_args(argv)
    n, reps = (2_000, 2) if args.quick else (50_000, 9)
    # Long enough for both variants to reach the GIL's steady state. Under contention a waiter
    # is handed the lock by the OS while it still waits for the GIL, and from then on every
    # acquire costs a GIL hand-off (a lock convoy). A short run of the faster variant can finish
    # before the first convoy forms and look several times faster than it is.
    per_thread = 200 if args.quick else 40_000

    lockdep.set_mode("collect")
    plain, bare_w, m = threading.Lock(), BareWrapper(), Mutex("bench.m")
    outer = [Mutex(f"bench.o{i}") for i in range(3)]
    spin = SpinLock("bench.s")
    irqsave = spin.irqsave()  # interrupts off around the lock: two state changes per with
    with m, irqsave:  # see each chain once, so the timed loops all hit the chain cache
        pass
    with spin:
        pass
    ns_nested(outer, m, 1, 1)
    ns_irqs_off(spin, 1, 1)
    tables = lockdep.stats()  # what the loops validate (each enable() below restarts chains)
    # Interleave the variants round by round and keep each one's best round, so a burst of
    # load from elsewhere on the machine hits all of them alike instead of skewing one ratio.
    best = dict.fromkeys(("raw", "bare", "off", "cached1", "cached4", "irqsave", "spin",
                          "spin_off"), float("inf"))
    for _ in range(reps):
        best["raw"] = min(best["raw"], ns_per_with(plain, n, 1))
        best["bare"] = min(best["bare"], ns_per_with(bare_w, n, 1))
        best["cached1"] = min(best["cached1"], ns_per_with(m, n, 1))
        best["cached4"] = min(best["cached4"], ns_nested(outer, m, n, 1))
        best["irqsave"] = min(best["irqsave"], ns_per_with(irqsave, n, 1))
        best["spin"] = min(best["spin"], ns_per_with(spin, n, 1))
        best["spin_off"] = min(best["spin_off"], ns_irqs_off(spin, n, 1))
        lockdep.disable()
        best["off"] = min(best["off"], ns_per_with(m, n, 1))
        lockdep.enable()
    raw, bare, off = best["raw"], best["bare"], best["off"]
    cached1, cached4 = best["cached1"], best["cached4"]
    first = first_chain_ns(2_000 if not args.quick else 100)
    data = protected_reads(n // 10, reps)
    # Interleaved on/off pairs: report the median of each and the spread of per-pair ratios.
    ons, offs = [], []
    for _ in range(3 if args.quick else 5):
        ons.append(contended_ops_per_s(8, per_thread, True))
        offs.append(contended_ops_per_s(8, per_thread, False))
    on_tput, off_tput = statistics.median(ons), statistics.median(offs)
    pair = sorted(a / b for a, b in zip(ons, offs, strict=True))

    rows = [
        ("threading.Lock, with", raw, raw / bare),
        ("bare Python wrapper, with", bare, 1.0),
        ("sync.Mutex, lockdep off", off, off / bare),
        ("sync.Mutex, validated, cached chain depth 1", cached1, cached1 / bare),
        ("sync.Mutex, validated, cached chain depth 4", cached4, cached4 / bare),
        ("sync.SpinLock, validated, cached", best["spin"], best["spin"] / bare),
        ("sync.SpinLock, cached, in local_irq_save()", best["spin_off"], best["spin_off"] / bare),
        ("sync.SpinLock.irqsave(), validated, cached", best["irqsave"], best["irqsave"] / bare),
        ("first-time chain (validate + cache)", first, first / bare),
    ]
    print(f"python {sys.version.split()[0]}, {n} iterations per round, best of {reps} rounds")
    print(f"{'':46}{'ns/op':>10}{'x bare':>9}")
    for label, ns, ratio in rows:
        print(f"{label:46}{ns:10.0f}{ratio:9.2f}")
    print()
    base = data["plain attribute"]
    print(f"{'access with its protection held':46}{'ns/op':>10}{'x plain':>9}")
    for label, ns in data.items():
        print(f"{label:46}{ns:10.0f}{ns / base:9.2f}")
    print()
    print(f"8 threads contended (outer per-thread lock + one shared mutex), {per_thread}/thread,"
          f" median of {len(ons)} interleaved rounds:")
    print(f"  validation on : {on_tput:12,.0f} ops/s")
    print(f"  validation off: {off_tput:12,.0f} ops/s")
    print(f"  on/off ratio  : {on_tput / off_tput:12.2f}   (target >= 0.33; per-round ratios "
          f"{pair[0]:.2f}..{pair[-1]:.2f}, median {statistics.median(pair):.2f})")
    print(f"cached depth-1 / bare wrapper: {cached1 / bare:.2f}   (target <= 3.0)")
    print(f"cached SpinLock, interrupts off / on: {best['spin_off'] / best['spin']:.2f}   "
          "(interrupt state costs a cached acquire nothing: target ~1.0)")
    print(f"lockdep tables behind the single-thread loops: {tables}")
    print(f"lockdep reports during the benchmark: {len(lockdep.reports())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
