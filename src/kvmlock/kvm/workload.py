"""``kvmlock run``: boot the KVM model on real threads under lockdep and check it at the end.

Threads, all sharing one VM on one host machine:

* one thread per vCPU, in ``KVM_RUN`` (holding ``vcpu->mutex``), writing and reading guest
  memory: each vCPU owns some pages and remembers what it last wrote to each; between runs it
  also does vCPU ioctls that reach the leaf locks (TSC write, Hyper-V partition MSR);
* a dirty-log harvester feeding a live-migration copy of the logged memslot;
* a swapper that unmaps host pages through the MMU notifier and reuses the frames, and ages
  pages (clear_flush_young);
* a memslot updater creating, moving and deleting a second memslot;
* a CPU-hotplug thread taking a CPU down and up again (needs :mod:`kvmlock.kvm.machine`);
* an NX huge-page recovery thread removing TDP page tables under read-mode ``mmu_lock``
  beside the faulting vCPUs (TDP MMU only).

At the end it stops the guest and checks the invariants: every vCPU reads back what it last
wrote (no write lost to a dropped Dirty bit or a stale translation), a final harvest makes the
migration copy equal to the source (dirty log complete), the hardware state matches the CPUs,
and lockdep reported nothing. It prints fast- vs slow-path fault throughput, lock classes and
dependency edges.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kvmlock
from kvmlock import lockdep
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write
from kvmlock.kvm.hyperv import HyperV
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy
from kvmlock.kvm.mmu.nx_recovery import recover_nx_huge_page
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vm import VM

__all__ = ["WorkloadResult", "main", "run_workload"]

_EXTRA_PAGES = 4  # the memslot the updater keeps creating, moving and deleting
_EXTRA_BASES = (0, _EXTRA_PAGES)  # where (past the logged slot) it may sit


@dataclass
class WorkloadResult:
    """What one run did and found. ``ok`` is the verdict: no violation, no lockdep report."""

    vcpus: int
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    lock_classes: list[str] = field(default_factory=list)
    edges: int = 0
    reports: list[Any] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.reports

    def rate(self, key: str) -> float:
        return self.counters.get(key, 0) / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        c = self.counters
        lines = [
            f"kvmlock run: {self.vcpus} vCPUs for {self.seconds:.2f}s on real threads "
            "under lockdep",
            f"  guest accesses   {c.get('reads', 0) + c.get('writes', 0):>8}  "
            f"({c.get('writes', 0)} writes, {c.get('tlb_hits', 0)} TLB hits)",
            f"  fast-path faults {c.get('fast_pf', 0):>8}  ({self.rate('fast_pf'):,.0f}/s)",
            f"  slow-path faults {c.get('slow_pf', 0):>8}  ({self.rate('slow_pf'):,.0f}/s; "
            f"{c.get('retry_pf', 0)} retried after an invalidation)",
            f"  dirty-log rounds {c.get('harvests', 0):>8}  ({c.get('copied', 0)} pages copied)",
            f"  swap-outs        {c.get('swap_out', 0):>8}  ({c.get('writeback', 0)} written "
            f"back, {c.get('aged', 0)} pages aged)",
            f"  memslot updates  {c.get('memslot_updates', 0):>8}",
            f"  NX recoveries    {c.get('nx_recovered', 0):>8}  (page tables removed under "
            "read-mode mmu_lock)",
            *([f"  fast zaps        {c['fast_zaps']:>8}  (every TDP root invalidated, then "
               "zapped under read-mode mmu_lock)"] if c.get("fast_zaps") else []),
            f"  vCPU ioctls      {c.get('ioctls', 0):>8}  (TSC writes, Hyper-V MSRs)",
            f"  CPU hotplug      {c.get('hotplug', 0):>8}",
            f"  TLB flushes      {c.get('tlb_flushes', 0):>8}",
            f"  lock classes     {len(self.lock_classes):>8}  dependency edges {self.edges}",
        ]
        if self.violations:
            lines.append(f"INVARIANT VIOLATIONS ({len(self.violations)}):")
            lines += [f"  - {v}" for v in self.violations[:20]]
        if self.reports:
            lines.append(f"LOCKDEP REPORTS ({len(self.reports)}):")
            lines += [str(r) for r in self.reports[:5]]
        lines.append("result: " + ("OK -- every invariant held, no lockdep report" if self.ok
                                   else "FAILED"))
        return "\n".join(lines)


def _check_args(vcpus: object, seconds: object, pages: object) -> None:
    if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= 64:
        raise ValueError(f"vcpus must be an integer in 1..64, got {vcpus!r}")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not \
            0 < seconds <= 3600:
        raise ValueError(f"seconds must be a number in (0, 3600], got {seconds!r}")
    if not isinstance(pages, int) or isinstance(pages, bool) or not vcpus <= pages <= 4096:
        raise ValueError(f"pages must be an integer in [vcpus, 4096], got {pages!r}")


def run_workload(
    vcpus: int = 2,
    seconds: float = 1.0,
    *,
    pages: int = 32,
    host_pages: int | None = None,
    seed: int = 0,
    hotplug: bool = True,
    quiet: bool = False,
    hazards: dict[str, bool] | None = None,
    slot_zap_all: bool = False,
) -> WorkloadResult:
    """Run the threads for ``seconds``, stop them, check invariants; never hangs the caller.

    ``host_pages`` defaults to three quarters of the guest's pages so the swapper and direct
    reclaim really recycle frames. Runs in the caller's lockdep state (wrap it in
    ``lockdep.isolated()`` for a private one). ``slot_zap_all``: the memslot updater's
    deletions and moves fast-zap every TDP root (``VM(slot_zap_all=True)``), a second remover
    of page tables under read-mode ``mmu_lock`` beside NX recovery.
    """
    _check_args(vcpus, seconds, pages)
    nr_va = pages + 2 * _EXTRA_PAGES
    frames = host_pages if host_pages is not None else max(vcpus + 2, (pages * 3) // 4)
    machine = None
    if hotplug:
        from kvmlock.kvm.machine import Machine

        machine = Machine(nr_cpus=2)
    opts: dict[str, Any] = dict(nr_vcpus=vcpus, nr_pages=nr_va, host_pages=frames,
                                hazards=hazards, slot_zap_all=slot_zap_all)
    vm = machine.create_vm(**opts) if machine is not None else VM(**opts)
    before = len(lockdep.reports())
    vm.set_memory_region(0, base_gfn=0, npages=pages, hva=0, flags=LOG_DIRTY_PAGES)
    mig = MigrationCopy(vm, 0)
    stop = threading.Event()
    errors: list[str] = []
    counters = {"aged": 0, "hotplug": 0, "copied": 0}  # each written by one thread only
    owned = {v.id: list(range(v.id, pages, vcpus)) for v in vm.vcpus}
    tsc = TscSync(vm)
    hv = HyperV(vm)
    last: dict[int, dict[int, int]] = {v.id: {} for v in vm.vcpus}

    finished: list[str] = []

    def guard(fn):
        def run(*a: Any) -> None:
            try:
                fn(*a)
            except Exception as exc:  # recorded as a violation, never lost in a thread
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
                stop.set()
            finally:
                finished.append(fn.__name__)
        run.__name__ = fn.__name__
        return run

    @guard
    def vcpu_thread(vcpu) -> None:
        rng = random.Random(seed * 1000 + vcpu.id)
        mine = owned[vcpu.id]
        n = 0
        while not stop.is_set():
            with vcpu.mutex:  # KVM_RUN
                for _ in range(16):
                    n += 1
                    va = rng.choice(mine)
                    guest_write(vcpu, va, n)
                    last[vcpu.id][va] = n
                    guest_read(vcpu, rng.randrange(pages))
                    if rng.random() < 0.05:
                        try:
                            guest_read(vcpu, pages + rng.randrange(2 * _EXTRA_PAGES))
                        except GuestFault:
                            pass  # the updater's slot is absent right now: an MMIO exit
            with vcpu.mutex:  # vCPU ioctls: KVM_SET_MSRS (TSC, Hyper-V partition MSR)
                tsc.write(vcpu, n, time.monotonic_ns())
                hv.set_msr(vcpu, "HV_X64_MSR_GUEST_OS_ID", n)
                vcpu.stats["ioctls"] += 2
            time.sleep(0)

    @guard
    def harvester() -> None:
        while not stop.is_set():
            mig.round()
            time.sleep(0.002)

    @guard
    def swapper() -> None:
        rng = random.Random(seed + 7)
        while not stop.is_set():
            hva = rng.randrange(pages + _EXTRA_PAGES)  # the hvas both slots use
            if rng.random() < 0.3:
                counters["aged"] += 1
                vm.host.age(hva)
            else:
                vm.host.swap_out(hva)
            time.sleep(0.001)

    @guard
    def memslot_updater() -> None:
        rng = random.Random(seed + 11)
        present = False
        while not stop.is_set():
            base = pages + rng.choice(_EXTRA_BASES)  # same base: re-flag; other base: move
            if not present:
                vm.set_memory_region(1, base_gfn=base, npages=_EXTRA_PAGES, hva=pages)
            elif rng.random() < 0.3:
                vm.set_memory_region(1, npages=0)
            else:
                vm.set_memory_region(1, base_gfn=base, npages=_EXTRA_PAGES, hva=pages,
                                     flags=rng.choice((0, LOG_DIRTY_PAGES)))
            present = vm.memslots.access_pointer().by_id(1) is not None
            time.sleep(0.005)

    @guard
    def nx_recoverer() -> None:
        rng = random.Random(seed + 13)
        while not stop.is_set():
            recover_nx_huge_page(vm, rng.randrange(pages))
            time.sleep(0.003)

    @guard
    def hotplug_thread() -> None:
        assert machine is not None
        while not stop.is_set():
            machine.cpu_down(1)
            counters["hotplug"] += 1
            time.sleep(0.005)
            machine.cpu_up(1)
            counters["hotplug"] += 1
            time.sleep(0.005)

    threads = [kvmlock.spawn(vcpu_thread, v, name=f"vcpu{v.id}") for v in vm.vcpus]
    threads += [kvmlock.spawn(harvester, name="harvester"),
                kvmlock.spawn(swapper, name="swapper"),
                kvmlock.spawn(memslot_updater, name="memslot_updater")]
    if vm.mmu.tdp:
        threads.append(kvmlock.spawn(nx_recoverer, name="nx_recovery"))
    if machine is not None:
        threads.append(kvmlock.spawn(hotplug_thread, name="cpu_hotplug"))
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    deadline = time.monotonic() + 30
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - t0

    violations = list(errors)
    if len(finished) < len(threads):
        # Never hang the caller: a thread stuck for 30 s is reported, and the end-of-run
        # checks (which would need its locks) are skipped.
        violations.append(f"{len(threads) - len(finished)} thread(s) did not stop within 30 s "
                          f"after the run ended (a deadlock?)")
    elif not errors:
        # The guest is stopped: every vCPU reads back its own pages.
        for v in vm.vcpus:
            for va, want in sorted(last[v.id].items()):
                got = guest_read(v, va)
                if got != want:
                    violations.append(f"vcpu{v.id} wrote {want} to guest page {va} but reads "
                                      f"{got}")
        violations += vm.audit[:20]
        try:
            vm.mmu.check_pages()
        except AssertionError as exc:
            violations.append(str(exc))
        mig.round()
        violations += [f"dirty log lost gfn {g}: source {s}, migrated copy {d}"
                       for g, s, d in mig.mismatches()]
        if machine is not None:
            try:
                machine.check_hardware()
            except AssertionError as exc:
                violations.append(str(exc))
    counters["copied"] = mig.copied
    for v in vm.vcpus:
        for k, n in v.stats.items():
            counters[k] = counters.get(k, 0) + n
    counters.update(vm.stats)
    counters.update(vm.host.stats)
    g = lockdep.graph()
    result = WorkloadResult(
        vcpus=vcpus, seconds=elapsed, counters=counters,
        lock_classes=sorted(g.classes), edges=len({(e.src, e.dst) for e in g.edges}),
        reports=list(lockdep.reports()[before:]), violations=violations,
    )
    if not quiet:
        print(result.render())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``kvmlock run --vcpus N --seconds S``: 0 when every invariant held with no report."""
    p = argparse.ArgumentParser(
        prog="kvmlock run",
        description="Boot the KVM model on real threads (vCPUs, dirty-log harvester, swapper, "
                    "memslot updater, NX huge-page recovery, CPU hotplug) under lockdep; check "
                    "its invariants at the end. Exit status 0 when every invariant held and "
                    "lockdep reported nothing.")
    p.add_argument("--vcpus", type=int, default=2, help="vCPU threads (default 2)")
    p.add_argument("--seconds", type=float, default=2.0, help="how long to run (default 2)")
    p.add_argument("--pages", type=int, default=32, help="guest pages in the logged memslot")
    p.add_argument("--host-pages", type=int, default=None,
                   help="host frames (default: 3/4 of the guest pages, so frames get reused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-hotplug", action="store_true", help="no Machine / CPU hotplug thread")
    p.add_argument("--classes", action="store_true", help="list the lock classes seen")
    p.add_argument("--slot-zap-all", action="store_true",
                   help="memslot deletions and moves fast-zap every TDP root "
                        "(KVM_X86_QUIRK_SLOT_ZAP_ALL, the kernel's default)")
    a = p.parse_args(list(argv) if argv is not None else None)
    try:
        res = run_workload(a.vcpus, a.seconds, pages=a.pages, host_pages=a.host_pages,
                           seed=a.seed, hotplug=not a.no_hotplug, quiet=True,
                           slot_zap_all=a.slot_zap_all)
    except ValueError as exc:
        p.error(str(exc))
    print(res.render())
    if a.classes:
        print("lock classes: " + ", ".join(res.lock_classes))
    return 0 if res.ok else 1
