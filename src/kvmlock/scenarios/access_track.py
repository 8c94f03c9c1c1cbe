"""Access tracking without A/D bits (locking.rst, "Fast page fault": access-tracked SPTEs).

The host ages a page (clear_flush_young) while the guest keeps reading it. Aging hides the
SPTE from the CPU and saves its R/X bits; the next access faults and the fast path restores
them -- W only on a write. The checks: the page was reported young (Accessed not lost), a read
after aging leaves the SPTE read-only (W only on write), and the guest's earlier write survives
a later swap-out (the dirty state a writable SPTE stood for reached the page). The broken
variant forgets to pass that dirty state on when aging removes W.
"""

from __future__ import annotations

import kvmlock
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES, READONLY
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.dirty_log import MigrationCopy
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.registry import scenario

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}
_AGED_INV = "the dirty log is complete: the copy equals the guest after a final harvest"


def _access_track(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, ad_disabled=True,
            hazards={"access_track_drops_dirty": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)  # writable SPTE: without A/D bits, W is what says "dirty"
    young: list[bool] = []
    seen: list[int] = []

    def host_ages() -> None:
        young.append(vm.host.age(0))

    def vcpu0_reads() -> None:
        seen.append(guest_read(v0, 0))

    tasks = [kvmlock.spawn(host_ages, name="host_ages"),
             kvmlock.spawn(vcpu0_reads, name="vcpu0_reads")]
    for t in tasks:
        t.join()
    assert young == [True], "aging a page the guest had used reported it not young"
    assert seen == [1], f"the guest read {seen} instead of [1]"
    spte = vm.mmu.sptep(0).peek()
    assert S.is_present(spte) and not S.is_writable(spte), (
        f"after aging and a read the SPTE is {S.describe(spte)}: W may come back only on a write")
    vm.check()
    vm.host.swap_out(0)
    got = guest_read(v0, 0)
    assert got == 1, (f"the guest wrote 1 but reads {got} after swap-out: aging dropped the "
                      "page's dirty state together with the W bit")


@scenario("access_track.correct",
          rule="access tracking: restore R/X on fault, W only on write, no lost Accessed/Dirty",
          variant="correct", expect="pass",
          invariant="Dirty state reaches the page before W is taken away; W only on a write",
          catches=("access_track_drops_dirty", "slots_lock_spinlock", "tdp_pages_lock_mutex"),
          **_BOUND)
def access_track_correct() -> None:
    _access_track(False)


@scenario("access_track.drops_dirty.broken",
          rule="aging a writable A/D-disabled SPTE without marking the page dirty",
          variant="broken", expect="assertion",
          invariant="Dirty state reaches the page before W is taken away; W only on a write",
          **_BOUND)
def access_track_broken() -> None:
    _access_track(True)


def _race_then_swap(vm: VM, first, second, value: int) -> None:
    tasks = [kvmlock.spawn(first, name=first.__name__),
             kvmlock.spawn(second, name=second.__name__)]
    for t in tasks:
        t.join()
    vm.check()
    vm.host.swap_out(0)
    got = guest_read(vm.vcpus[0], 0)
    assert got == value, (f"the guest wrote {value} but reads {got:#x} after swap-out: the "
                          "dirty state of an SPTE was lost when it was replaced")


@scenario("access_track.read_vs_zap.correct",
          rule="an access-tracked SPTE is volatile: a zap replaces it atomically while the "
               "fast path restores it",
          variant="correct", expect="pass",
          invariant="Accessed reaches the page before the SPTE is dropped: a page read after "
                    "aging is reported young",
          catches=("access_track_not_volatile",), **_BOUND)
def read_vs_zap() -> None:
    # A read-only memslot: the SPTE is not MMU-writable, so only access tracking makes it
    # volatile. The zap is the slot's deletion, which keeps the page (unlike a swap-out).
    # vcpu1 maps the page; vcpu0, which has cached nothing (aging a read-only SPTE flushes
    # no TLB), is the one whose read walks the hidden SPTE and faults into the fast path.
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2, ad_disabled=True)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=READONLY)
    v0, v1 = vm.vcpus
    guest_read(v1, 0)
    vm.host.age(0)  # hidden from the CPU: the next walk faults into the fast path
    seen: list[int] = []

    def vcpu0_reads() -> None:
        try:
            seen.append(guest_read(v0, 0))
        except GuestFault:
            pass  # the slot was already gone

    def deleter() -> None:
        vm.set_memory_region(0, npages=0)

    tasks = [kvmlock.spawn(vcpu0_reads, name="vcpu0_reads"),
             kvmlock.spawn(deleter, name="deleter")]
    for t in tasks:
        t.join()
    vm.check()
    if seen:
        assert vm.host.age(0), ("the guest read the page after it was aged, but the page was "
                                "reported not young: the zap lost the restored SPTE's Accessed")


@scenario("access_track.write_vs_age.correct",
          rule="aging a read-only, MMU-writable A/D-disabled SPTE exchanges it atomically "
               "while the fast path makes it writable",
          variant="correct", expect="pass",
          invariant="Dirty (W without A/D bits) reaches the page before aging takes W away",
          catches=("age_plain_store",), **_BOUND)
def write_vs_age() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, ad_disabled=True)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    guest_read(v0, 0)  # logging: read-only but MMU-writable

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 5)

    def host_ages() -> None:
        vm.host.age(0)

    _race_then_swap(vm, vcpu0_writes, host_ages, 5)


@scenario("access_track.dirty_vs_age.correct",
          rule="clearing Accessed (A/D bits on) is an atomic and-not: the CPU may set Dirty "
               "meanwhile",
          variant="correct", expect="pass",
          invariant="Dirty set by the CPU reaches the page before the SPTE is dropped",
          catches=("age_clear_nonatomic",), **_BOUND)
def dirty_vs_age() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    guest_read(v0, 0)  # read-only, MMU-writable, Accessed: the write sets W, then the CPU D

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 7)

    def host_ages() -> None:
        vm.host.age(0)

    _race_then_swap(vm, vcpu0_writes, host_ages, 7)


@scenario("access_track.write_after_harvest_vs_age.correct",
          rule="a fast-path fix that makes an SPTE writable logs its gfn, also when the same "
               "fix restores the SPTE from access tracking",
          variant="correct", expect="pass", invariant=_AGED_INV,
          catches=("fast_pf_restore_no_mark_dirty", "fast_pf_no_mark_dirty"), **_BOUND)
def write_after_harvest_vs_age() -> None:
    # A/D bits off, dirty logging on: the harvest leaves gfn 0 read-only but MMU-writable.
    # The host ages the page while the guest writes it: if aging comes first, the write
    # faults on an access-tracked SPTE and one fast-path fix restores it and sets W.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, ad_disabled=True)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)
    mig.round()

    def host_ages() -> None:
        vm.host.age(0)

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 2)

    tasks = [kvmlock.spawn(host_ages, name="host_ages"),
             kvmlock.spawn(vcpu0_writes, name="vcpu0_writes")]
    for t in tasks:
        t.join()
    mig.round()
    bad = mig.mismatches()
    assert not bad, (f"after the final harvest the copy differs from the guest at (gfn, "
                     f"source, copy) {bad}: the write after the harvest was never logged")


@scenario("aging.young.correct",
          rule="aging reports a used page young, and a dropped SPTE passes Accessed to the page",
          variant="correct", expect="pass",
          invariant="a page whose SPTE the guest used since it was last aged is reported young",
          catches=("no_ad_propagation",))
def young() -> None:
    # (Aging flushes no TLB for a cleared Accessed bit: a vCPU that caches the translation
    # may use the page without the next aging seeing it. The kernel tolerates that false
    # negative, so this checks only what goes through the SPTE.)
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_read(v0, 0)
    assert vm.host.age(0), "a page the guest had just read was reported not young"
    guest_read(v0, 1)
    vm.set_memory_region(0, npages=0)  # deleting the slot drops the SPTEs
    assert vm.host.age(1), ("the guest read page 1, then its SPTE was dropped, but the page "
                            "was reported not young: Accessed did not reach the page")


def _aged_write_logged(broken: bool) -> None:
    # A/D bits off, dirty logging on. The guest writes page 0 (the fault makes the SPTE
    # writable and logs gfn 0); the host ages the page, which takes W away (the SPTE stays
    # MMU-writable); a migration round harvests gfn 0 and write-protects it -- the SPTE is
    # read-only already, so that asks for no flush. If aging did not flush either, vcpu0 still
    # caches the writable translation and its next write neither faults nor reaches the log.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, ad_disabled=True,
            hazards={"age_no_flush": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)

    def host_ages() -> None:
        vm.host.age(0)

    def migration_round() -> None:
        mig.round()

    tasks = [kvmlock.spawn(host_ages, name="host_ages"),
             kvmlock.spawn(migration_round, name="migration_round")]
    for t in tasks:
        t.join()
    guest_write(v0, 0, 2)
    mig.round()
    bad = mig.mismatches()
    assert not bad, (f"after the final harvest the copy differs from the guest at (gfn, "
                     f"source, copy) {bad}: a write after aging never reached the dirty log")


@scenario("access_track.aged_write_logged.correct",
          rule="aging that takes W from an A/D-disabled SPTE flushes TLBs, so the next write "
               "faults and is logged",
          variant="correct", expect="pass", invariant=_AGED_INV,
          catches=("age_no_flush",), **_BOUND)
def aged_write_logged_correct() -> None:
    _aged_write_logged(False)


@scenario("access_track.aged_write_logged.broken",
          rule="aging takes W away without a flush: a harvest that finds the SPTE read-only "
               "does not flush either, and the cached writable translation writes unlogged",
          variant="broken", expect="assertion", invariant=_AGED_INV, **_BOUND)
def aged_write_logged_broken() -> None:
    _aged_write_logged(True)


@scenario("dirty_log.ad_disabled_harvest.correct",
          rule="without A/D bits W is the dirty bit: write-protecting for a harvest passes the "
               "dirty state to the page first",
          variant="correct", expect="pass",
          invariant="dirty log complete, and the write survives a later swap-out",
          catches=("wrprot_drops_dirty",), **_BOUND)
def ad_disabled_harvest() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, ad_disabled=True)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)  # writable: W says dirty

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 2)

    _race_then_swap(vm, vcpu0_writes, mig.round, 2)
