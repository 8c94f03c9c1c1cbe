"""Fast-path vs slow-path page fault cost, on real threads, with and without lockdep.

The same fault -- a write to a page that dirty logging write-protected -- is handled twice:
with TDP the fast path fixes the SPTE with one cmpxchg and no lock; with shadow paging (where
the fast path is not allowed) the slow path takes SRCU, looks the host page up and takes
``mmu_lock`` for write. Before each fault the SPTE is put back to write-protected with one
atomic store, in both loops alike. Prints microseconds per fault (best of 15 alternating
rounds) and the slow/fast ratio from one run.

    python benchmarks/bench_fault.py [--faults N]
"""

from __future__ import annotations

import argparse
import time

from kvmlock import lockdep
from kvmlock.kvm.guest import guest_read, set_gpte
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.page_fault import page_fault
from kvmlock.kvm.vm import VM


def _setup(tdp: bool):
    vm = VM(nr_vcpus=1, nr_pages=4, tdp=tdp)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    if not tdp:
        set_gpte(vm, 0, 0)
    v = vm.vcpus[0]
    guest_read(v, 0)
    sptep = vm.mmu.sptep(0)
    ro = sptep.peek()
    assert not S.is_writable(ro) and S.is_mmu_writable(ro)
    return vm, v, sptep, ro


def _round(v, sptep, ro: int, key: str, n: int) -> float:
    start_count = v.stats[key]
    t0 = time.perf_counter()
    for _ in range(n):
        sptep.store(ro)
        page_fault(v, 0, True)
    dt = time.perf_counter() - t0
    assert v.stats[key] - start_count == n, f"expected {n} {key} faults, got {v.stats}"
    return dt / n * 1e6


def _time_faults(n: int, rounds: int) -> tuple[float, float]:
    """Best of ``rounds`` alternating fast/slow rounds of ``n`` faults each: the machine is
    shared, so both paths see the same disturbances and the minimum is the cleanest run."""
    _, vf, sf, rof = _setup(True)
    _, vs, ss, ros = _setup(False)
    fast = slow = float("inf")
    for _ in range(rounds):
        fast = min(fast, _round(vf, sf, rof, "fast_pf", n))
        slow = min(slow, _round(vs, ss, ros, "slow_pf", n))
    return fast, slow


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", type=int, default=1000, help="faults per round")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    print(f"{'lockdep':8} {'fast path us/fault':>19} {'slow path us/fault':>19} {'slow/fast':>10}")
    for on in (True, False):
        with lockdep.isolated():
            (lockdep.enable if on else lockdep.disable)()
            assert lockdep.enabled() == on
            fast, slow = _time_faults(a.faults, a.rounds)
        print(f"{'on' if on else 'off':8} {fast:19.2f} {slow:19.2f} {slow / fast:9.1f}x")
    lockdep.enable()


if __name__ == "__main__":
    main()
