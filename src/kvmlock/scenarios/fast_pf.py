"""The three hazards of the fast page fault (locking.rst, "Fast page fault"), each in a correct
and a broken variant.

* ``fast_pf.aba``: the fast path fixes an SPTE of an *indirect* shadow page. Between its read of
  the SPTE and its cmpxchg, the host swaps the page out and reuses the frame for another gfn the
  guest has re-pointed the same guest page at; the cmpxchg succeeds on identical bits and logs
  the old gfn, so the write to the new gfn never reaches the dirty log.
* ``fast_pf.dirty_bit``: the zap on swap-out clears a read-only, Accessed SPTE with a plain
  load and store, as if it could not change; the fast path makes it writable and the CPU sets
  Dirty in between, the store throws that Dirty bit away, and swap-out drops the guest's data.
* ``fast_pf.tlb_flush``: write-protecting a writable SPTE for dirty logging does not flush the
  TLB; the guest keeps writing through its cached writable translation and those writes are
  never logged, so the migration destination misses them.

Also here, because it is about faults too: ``tdp_mmu.pages_lock`` -- TDP faults hold
``mmu_lock`` only for read, so two of them may build the same shadow page at once;
``tdp_mmu_pages_lock`` makes one of them win.

Each body checks the DESIGN.md invariant end to end: the migration copy equals the source after
a final harvest (dirty log complete), or the guest reads back what it wrote after swap-out
(Dirty bit propagated before the SPTE was dropped).
"""

from __future__ import annotations

import kvmlock
from kvmlock.kvm.guest import guest_read, guest_write, set_gpte
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy, get_dirty_log
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario

__all__: list[str] = []

#: DPOR explores every inequivalent interleaving with no preemption bound; max_runs is only a
#: safety net (the largest body, ABA, needs about 2,300 executions).
_BOUND = {"strategy": "dpor", "max_runs": 20000}


def _run(*fns) -> None:
    tasks = [kvmlock.spawn(fn, name=fn.__name__) for fn in fns]
    for t in tasks:
        t.join()


def _assert_log_complete(mig: MigrationCopy) -> None:
    mig.round()
    bad = mig.mismatches()
    assert not bad, "dirty log lost a write: " + ", ".join(
        f"gfn {g} holds {src} but the migrated copy has {dst}" for g, src, dst in bad)


# --------------------------------------------------------------------------- gfn->pfn ABA


def _aba(broken: bool) -> None:
    # Shadow paging: guest page 0 -> gfn 1; gfns 0..3 live at hvas 0..3; 3 host frames.
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=3, tdp=False,
            hazards={"fast_pf_indirect": broken})
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    set_gpte(vm, 0, 1)
    v0, v1 = vm.vcpus
    guest_read(v0, 0)  # read fault with logging on: SPTE read-only but MMU-writable
    mig = MigrationCopy(vm, 0)  # guest memory starts zeroed: the destination too

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 7)

    def host_and_guest() -> None:
        vm.host.swap_out(1)  # gfn 1's frame is freed...
        set_gpte(vm, 0, 2)  # ...the guest re-points page 0 at gfn 2...
        guest_read(v1, 0)  # ...whose fault gets the recycled frame: same pfn, same bits

    _run(vcpu0_writes, host_and_guest)
    vm.check()
    _assert_log_complete(mig)


@scenario("fast_pf.aba.correct", rule="fast page fault only on direct shadow pages (gfn->pfn ABA)",
          variant="correct", expect="pass", catches=("fast_pf_indirect",),
          invariant="dirty log complete: every guest write reaches the migrated copy", **_BOUND)
def aba_correct() -> None:
    _aba(False)


@scenario("fast_pf.aba.broken",
          rule="fast page fault on an indirect shadow page logs the gfn it saw, not the one mapped",
          variant="broken", expect="assertion",
          invariant="dirty log complete: every guest write reaches the migrated copy", **_BOUND)
def aba_broken() -> None:
    _aba(True)


# --------------------------------------------------------------------------- Dirty bit


def _dirty_bit(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2,
            hazards={"nonatomic_volatile_clear": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    guest_read(v0, 0)  # SPTE: read-only, Accessed, MMU-writable -- volatile

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 5)  # fast path sets W, the CPU sets Dirty

    def swapper() -> None:
        vm.host.swap_out(0)  # zaps the SPTE; writes the page back only if it is dirty

    _run(vcpu0_writes, swapper)
    vm.check()
    got = guest_read(v0, 0)
    assert got == 5, (f"the guest wrote 5 but reads {got} after swap-out: the Dirty bit was "
                      "lost when the SPTE was dropped, so the page was not written back")


@scenario("fast_pf.dirty_bit.correct",
          rule="an SPTE the fast path may change is updated atomically (Dirty bit kept)",
          variant="correct", expect="pass",
          catches=("nonatomic_volatile_clear", "no_ad_propagation", "notifier_no_zap"),
          invariant="Dirty bit propagated to the page before the SPTE is dropped", **_BOUND)
def dirty_bit_correct() -> None:
    _dirty_bit(False)


@scenario("fast_pf.dirty_bit.broken",
          rule="read-only Accessed SPTE cleared with a plain store: the Dirty bit is lost",
          variant="broken", expect="assertion",
          invariant="Dirty bit propagated to the page before the SPTE is dropped", **_BOUND)
def dirty_bit_broken() -> None:
    _dirty_bit(True)


# --------------------------------------------------------------------------- TLB flush


def _tlb_flush(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2,
            hazards={"skip_tlb_flush_on_wrprot": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)  # writable SPTE, cached writable in the TLB

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 2)

    def harvester() -> None:
        mig.round()  # harvest, write-protect, flush (or not), copy

    _run(vcpu0_writes, harvester)
    vm.check()
    _assert_log_complete(mig)


@scenario("fast_pf.tlb_flush.correct",
          rule="writable -> read-only SPTE change flushes TLBs", variant="correct",
          expect="pass",
          catches=("skip_tlb_flush_on_wrprot", "harvest_no_flush", "flush_no_wait",
                   "flush_reads_mode_first", "fast_pf_no_mark_dirty", "wrprot_keeps_w",
                   "harvest_without_mmu_lock"),
          invariant="no write through a stale writable translation after wrprot + flush",
          **_BOUND)
def tlb_flush_correct() -> None:
    _tlb_flush(False)


@scenario("fast_pf.tlb_flush.broken",
          rule="write-protect without TLB flush: writes through the stale TLB go unlogged",
          variant="broken", expect="assertion",
          invariant="no write through a stale writable translation after wrprot + flush",
          **_BOUND)
def tlb_flush_broken() -> None:
    _tlb_flush(True)


# --------------------------------------------------------------------------- TDP MMU


def _tdp_parallel_faults(broken: bool) -> None:
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2,
            hazards={"tdp_link_without_pages_lock": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    mig = MigrationCopy(vm, 0)

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 3)

    def vcpu1_writes() -> None:
        guest_write(v1, 1, 4)

    _run(vcpu0_writes, vcpu1_writes)
    vm.check()
    _assert_log_complete(mig)


@scenario("tdp_mmu.pages_lock.correct",
          rule="TDP faults under read-mode mmu_lock link shadow pages under tdp_mmu_pages_lock",
          variant="correct", expect="pass",
          catches=("tdp_link_without_pages_lock", "tdp_link_no_recheck"),
          invariant="each shadow page linked once and reachable; dirty log complete", **_BOUND)
def tdp_pages_lock_correct() -> None:
    _tdp_parallel_faults(False)


@scenario("tdp_mmu.pages_lock.broken",
          rule="TDP faults link shadow pages with only the read-mode mmu_lock held (lockdep "
               "off: it reports the unguarded page list at once; this shows the consequence)",
          variant="broken", expect="assertion",
          invariant="each shadow page linked once and reachable; dirty log complete",
          lockdep=False, **_BOUND)
def tdp_pages_lock_broken() -> None:
    _tdp_parallel_faults(True)


# --------------------------------------------------------------------------- scale: 3 actors


@scenario("fast_pf.zap_race.correct",
          rule="two vCPUs fast-fault one write-protected SPTE while swap-out zaps it",
          variant="correct", expect="pass",
          invariant="every present SPTE maps the host's current frame; no access to a freed "
                    "frame; the last write survives swap-out",
          catches=("fast_pf_plain_store",), strategy="dpor", max_runs=20000,
          preemption_bound=3)
def zap_race_correct() -> None:
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    guest_read(v0, 0)  # read-only, MMU-writable: both writes take the fast path
    together(lambda: guest_write(v0, 0, 1), lambda: guest_write(v1, 0, 2),
             lambda: vm.host.swap_out(0), names=["vcpu0 writes", "vcpu1 writes", "swap-out"])
    vm.check()
    got = guest_read(v0, 0)
    assert got in (1, 2), f"the guests wrote 1 and 2 but page 0 reads {got:#x}"


@scenario("dirty_log.harvest_two_writers.correct",
          rule="KVM_GET_DIRTY_LOG (xchg of each word, write-protect, flush) racing two writers",
          variant="correct", expect="pass",
          invariant="dirty log complete: every guest write reaches the migrated copy",
          catches=("harvest_load_store", "mark_dirty_nonatomic", "harvest_protects_before_xchg",
                   "fast_pf_marks_dirty_first"), **_BOUND)
def harvest_two_writers() -> None:
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    guest_read(v0, 0)
    guest_read(v1, 1)  # both read-only: each write sets its bit in the same bitmap word
    mig = MigrationCopy(vm, 0)
    together(lambda: guest_write(v0, 0, 3), lambda: guest_write(v1, 1, 4), mig.round,
             names=["vcpu0 writes", "vcpu1 writes", "KVM_GET_DIRTY_LOG"])
    vm.check()
    _assert_log_complete(mig)


def _first_write_vs_harvest(pml: bool, broken: bool) -> None:
    # gfn 0 is not mapped: the write takes the slow path, which installs a writable SPTE and
    # logs the gfn; the copying harvest races it, and a final harvest closes the migration
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, pml=pml,
            hazards={"slow_pf_marks_dirty_before_lock": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    together(lambda: guest_write(v0, 0, 3), mig.round,
             names=["vcpu0 writes (first touch)", "KVM_GET_DIRTY_LOG"])
    vm.check()
    _assert_log_complete(mig)


_FIRST_WRITE_BROKEN = ("the slow fault logs the gfn before taking mmu_lock: a harvest in "
                       "between takes the bit and finds no SPTE, and the writable SPTE "
                       "installed afterwards is never logged")


@pair("dirty_log.first_write_vs_harvest",
      rule="a first-touch write fault logs its gfn inside the mmu_lock section that installs "
           "the writable SPTE, which the write-protecting harvest excludes",
      broken_rule=_FIRST_WRITE_BROKEN, broken_expect="assertion",
      invariant="dirty log complete: every guest write reaches the migrated copy",
      catches=("slow_pf_marks_dirty_before_lock",), **_BOUND)
def first_write_vs_harvest(broken: bool) -> None:
    _first_write_vs_harvest(False, broken)


@pair("dirty_log.pml_first_write_vs_harvest",
      rule="with PML the first-touch fault installs a writable, Dirty SPTE (the CPU will not "
           "log it) and logs its gfn under mmu_lock, which the Dirty-clearing harvest excludes",
      broken_rule=_FIRST_WRITE_BROKEN, broken_expect="assertion",
      invariant="dirty log complete: every guest write reaches the migrated copy",
      catches=("slow_pf_marks_dirty_before_lock",), **_BOUND)
def pml_first_write_vs_harvest(broken: bool) -> None:
    _first_write_vs_harvest(True, broken)


@scenario("dirty_log.harvest_flush_any.correct",
          rule="KVM_GET_DIRTY_LOG flushes when any harvested gfn was write-protected, even if "
               "a later gfn in the word needed no flush",
          variant="correct", expect="pass",
          invariant="dirty log complete: every guest write reaches the migrated copy",
          catches=("harvest_flush_last_gfn", "harvest_no_flush"), **_BOUND)
def harvest_flush_any() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    guest_write(v0, 1, 1)  # gfn 1 logged...
    vm.host.swap_out(1)  # ...and its SPTE zapped: harvesting it write-protects nothing
    guest_write(v0, 0, 2)  # gfn 0 logged, writable and cached writable in vcpu0's TLB
    mig = MigrationCopy(vm, 0)
    together(mig.round, lambda: guest_write(v0, 0, 3),
             names=["KVM_GET_DIRTY_LOG", "vcpu0 writes"])
    vm.check()
    _assert_log_complete(mig)


@scenario("tdp_mmu.install_race.correct",
          rule="two TDP faults on one gfn under read-mode mmu_lock install by cmpxchg",
          variant="correct", expect="pass",
          invariant="Dirty bit propagated before the SPTE is dropped: the write survives swap-out",
          catches=("tdp_plain_store", "slow_pf_no_mark_dirty", "tdp_fault_rebuilds_good_spte"),
          **_BOUND)
def tdp_install_race() -> None:
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    mig = MigrationCopy(vm, 0)
    together(lambda: guest_read(v0, 0), lambda: guest_write(v1, 0, 6),
             names=["vcpu0 reads", "vcpu1 writes"])
    vm.check()
    _assert_log_complete(mig)
    # vcpu1 may still cache the writable translation its fault installed: a later fault that
    # found the SPTE already good enough must have left it alone (a rebuild without W and no
    # flush would let this write bypass the log the harvest just re-armed)
    guest_write(v1, 0, 7)
    _assert_log_complete(mig)
    vm.host.swap_out(0)
    got = guest_read(v0, 0)
    assert got == 7, (f"the guest wrote 7 but reads {got:#x} after swap-out: a fault's install "
                      "overwrote the SPTE that held the Dirty bit")


@scenario("dirty_log.enable.correct",
          rule="turning dirty logging on write-protects the slot and flushes, racing a writer",
          variant="correct", expect="pass",
          invariant="dirty log complete from the moment logging is on (full copy, then rounds)",
          catches=("logging_no_wrprot", "logging_wrprot_no_flush", "logging_wrprot_before_swap",
                   "logging_wrprot_short"),
          **_BOUND)
def logging_enable() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)  # writable, and cached writable in vcpu0's TLB
    guest_write(v0, 1, 1)  # the slot's last page too (the protection covers the whole slot)
    together(lambda: guest_write(v0, 0, 2),
             lambda: vm.set_memory_region(0, base_gfn=0, npages=2, hva=0,
                                          flags=LOG_DIRTY_PAGES),
             names=["vcpu0 writes", "KVM_SET_USER_MEMORY_REGION (log)"])
    mig = MigrationCopy(vm, 0)
    mig.dest = {gfn: vm.host.contents(gfn) for gfn in range(2)}  # the first full copy
    guest_write(v0, 0, 3)  # must fault and be logged
    guest_write(v0, 1, 3)
    vm.check()
    _assert_log_complete(mig)


def _harvest_if_logging(vm: VM) -> None:
    try:
        get_dirty_log(vm, 0)
    except ValueError:
        pass  # logging was already off: the ioctl fails


@scenario("dirty_log.disable_vs_harvest.correct",
          rule="KVM_GET_DIRTY_LOG holds kvm->slots_lock: turning logging off frees the slot's "
               "dirty bitmap (after a grace period the harvest, no kvm->srcu reader, does not "
               "hold off)",
          variant="correct", expect="pass",
          invariant="no harvest reads a dirty bitmap after it was freed",
          catches=("harvest_without_slots_lock",), **_BOUND)
def logging_disable_vs_harvest() -> None:
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0, flags=LOG_DIRTY_PAGES)
    guest_write(vm.vcpus[0], 0, 1)  # logged
    together(lambda: _harvest_if_logging(vm),
             lambda: vm.set_memory_region(0, base_gfn=0, npages=1, hva=0),
             names=["KVM_GET_DIRTY_LOG", "KVM_SET_USER_MEMORY_REGION (no log)"])
    vm.check()


@scenario("dirty_log.disable_vs_write.correct",
          rule="turning dirty logging off frees the slot's dirty bitmap only after the new "
               "memslots are in and a grace period has passed: a vCPU that found the slot "
               "inside kvm->srcu may still mark a page dirty in it",
          variant="correct", expect="pass",
          invariant="no vCPU marks a page dirty in a bitmap after it was freed; the write lands",
          catches=("bitmap_freed_before_swap",), **_BOUND)
def logging_disable_vs_write() -> None:
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    guest_read(v0, 0)  # read-only for logging: the write faults and logs
    together(lambda: guest_write(v0, 0, 5),
             lambda: vm.set_memory_region(0, base_gfn=0, npages=1, hva=0),
             names=["vcpu0 writes", "KVM_SET_USER_MEMORY_REGION (no log)"])
    vm.check()
    assert guest_read(v0, 0) == 5


@scenario("fast_pf.zap_all_race.correct",
          rule="two vCPUs fast-fault one SPTE while its shadow page is zapped and freed "
               "(the lockless walk holds off the free)",
          variant="correct", expect="pass",
          invariant="no SPTE of a freed shadow page is changed; every present SPTE maps the "
                    "host's frame; the last write survives",
          catches=("lockless_walk_one_flag", "lockless_walk_unprotected",
                   "free_pages_no_grace_period"), strategy="dpor",
          max_runs=20000, preemption_bound=3)
def zap_all_race() -> None:
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0, v1 = vm.vcpus
    guest_read(v0, 0)  # read-only, MMU-writable: both writes take the fast path
    together(lambda: guest_write(v0, 0, 1), lambda: guest_write(v1, 0, 2),
             vm.mmu.zap_all, names=["vcpu0 writes", "vcpu1 writes", "kvm_mmu_zap_all"])
    vm.check()
    got = guest_read(v0, 0)
    assert got in (1, 2), f"the guests wrote 1 and 2 but page 0 reads {got:#x}"


@scenario("fast_pf.zap_all_flush.correct",
          rule="kvm_mmu_zap_all flushes remote TLBs before the pages go: a later swap-out "
               "finds no SPTE, so nothing else would flush",
          variant="correct", expect="pass",
          invariant="no vCPU reaches a freed frame through a cached translation",
          catches=("zap_all_no_flush",), **_BOUND)
def zap_all_flush() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    together(lambda: guest_write(v0, 0, 1), vm.mmu.zap_all,
             names=["vcpu0 writes", "kvm_mmu_zap_all"])
    vm.host.swap_out(0)  # its notifier finds no SPTE to zap, so it flushes nothing
    got = guest_read(v0, 0)
    assert got == 1, f"the guest wrote 1 but page 0 reads {got:#x} after zap_all and swap-out"
    vm.check()
