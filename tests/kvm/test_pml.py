"""Dirty logging by Dirty bits (PML): the CPU logs the pages it sets Dirty on, the TLB caches
Dirty, and a harvest clears Dirty with an exchange and then flushes."""

import pytest

import kvmlock
from kvmlock import explore
from kvmlock.kvm.guest import guest_read, guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.dirty_log import MigrationCopy, clear_dirty_gfn, get_dirty_log
from kvmlock.kvm.mmu.page_track import emulate_write
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.vm import VM


def pml_vm(**kw):
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, pml=True, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    return vm, vm.vcpus[0]


def test_pml_needs_ad_bits():
    with pytest.raises(ValueError, match="pml=True needs Accessed/Dirty bits"):
        VM(pml=True, ad_disabled=True)


def test_a_harvest_clears_dirty_not_w_and_flushes():
    vm, v = pml_vm()
    guest_write(v, 0, 1)
    spte = vm.mmu.sptep(0).peek()
    assert S.is_writable(spte) and spte & S.DIRTY and v.tlb[0].dirty
    flushes = vm.stats["tlb_flushes"]
    assert get_dirty_log(vm, 0) == [0]
    spte = vm.mmu.sptep(0).peek()
    assert S.is_writable(spte) and not spte & S.DIRTY, S.describe(spte)
    assert vm.stats["tlb_flushes"] == flushes + 1 and not v.tlb
    guest_write(v, 0, 2)  # no fault: the CPU sets Dirty and logs the page
    assert v.stats["slow_pf"] == 1 and v.stats["fast_pf"] == 0
    assert get_dirty_log(vm, 0) == [0]
    guest_read(v, 1)  # a read fault maps writable and Dirty, and logs (as make_spte does)
    assert get_dirty_log(vm, 0) == [1]


def test_a_cached_dirty_translation_hides_the_write_until_flushed():
    # the hazard itself, step by step: Dirty cleared in the SPTE, the TLB still says Dirty
    vm, v = pml_vm()
    guest_write(v, 0, 1)
    get_dirty_log(vm, 0)
    guest_write(v, 0, 2)  # walks, sets Dirty, logs; the TLB caches it with Dirty
    with vm.mmu_lock.write():
        assert clear_dirty_gfn(vm, 0), "a Dirty bit was cleared: the caller must flush"
    slot = vm.memslots.access_pointer().by_id(0)
    slot.dirty_bitmap[0].store(0)
    guest_write(v, 0, 3)  # no flush yet: the CPU writes without setting Dirty
    assert not vm.mmu.sptep(0).peek() & S.DIRTY and slot.dirty_bitmap[0].peek() == 0
    flush_remote_tlbs(vm)
    guest_write(v, 0, 4)  # near miss: after the flush the write walks and is logged
    assert vm.mmu.sptep(0).peek() & S.DIRTY and slot.dirty_bitmap[0].peek() == 1


def test_a_read_cached_entry_without_dirty_walks_on_write():
    # write-protect logging, not PML: the fast path sets W without Dirty, a read caches that
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v = vm.vcpus[0]
    guest_read(v, 0)
    sptep = vm.mmu.sptep(0)
    with vm.mmu_lock.write():  # as if the fast path had made it writable, Dirty still clear
        sptep.store(sptep.peek() | S.W)
    flush_remote_tlbs(vm)
    guest_read(v, 0)
    assert v.tlb[0].writable and not v.tlb[0].dirty
    hits = v.stats["tlb_hits"]
    guest_write(v, 0, 5)
    assert v.stats["tlb_hits"] == hits, "a write through a clean entry walks the SPTE"
    assert sptep.peek() & S.DIRTY and v.tlb[0].dirty
    guest_write(v, 0, 6)
    assert v.stats["tlb_hits"] == hits + 1, "near miss: a dirty entry is written through"


def _clear_races_cpu(*, kvm_wrote: bool, hazards=()):
    vm, v = pml_vm(hazards=set(hazards))
    mig = MigrationCopy(vm, 0)
    guest_write(v, 0, 1)
    mig.round()
    if kvm_wrote:
        emulate_write(v, 0, 2)  # logged, and no SPTE's Dirty says so
    else:
        guest_write(v, 0, 2)  # logged by setting Dirty: the SPTE is Dirty at the harvest

    def writer():
        guest_write(v, 0, 3)
        guest_write(v, 0, 4)

    t = [kvmlock.spawn(writer, name="writer"), kvmlock.spawn(mig.round, name="harvest")]
    for x in t:
        x.join()
    mig.round()
    guest_write(v, 0, 5)
    mig.round()
    assert not mig.mismatches(), mig.mismatches()


@pytest.mark.parametrize("kvm_wrote", [True, False])
def test_a_plain_store_loses_dirty_only_if_the_spte_was_clean(kvm_wrote):
    # the kernel stores a Dirty SPTE plainly (the CPU has nothing left to set in it); only a
    # writable, clean one is volatile -- which the harvest meets after KVM wrote the page
    res = explore.check(lambda: _clear_races_cpu(kvm_wrote=kvm_wrote,
                                                 hazards={"clean_spte_plain_store"}),
                        strategy="dpor", max_runs=5000)
    assert (res.failure is not None) == kvm_wrote, res.failure
    ok = explore.check(lambda: _clear_races_cpu(kvm_wrote=kvm_wrote), strategy="dpor",
                       max_runs=5000)
    assert ok.failure is None and ok.exhausted


def test_the_cpu_logs_in_the_vcpu_buffer_and_the_exit_drains_it_inside_srcu():
    from kvmlock import lockdep
    from kvmlock.kvm.guest import flush_pml_buffer

    vm, v = pml_vm()
    guest_write(v, 0, 1)
    get_dirty_log(vm, 0)  # Dirty cleared: the CPU logs the next write
    guest_write(v, 1, 2)
    guest_write(v, 0, 3)
    assert v.pml_buffer == [], "drained at the exit"
    assert sorted(get_dirty_log(vm, 0)) == [0, 1]
    # a gfn logged for a memslot deleted before the drain is dropped, not marked anywhere
    v.pml_buffer.append(1)
    vm.set_memory_region(0, npages=0)
    flush_pml_buffer(v)
    assert v.pml_buffer == [] and lockdep.reports() == []
