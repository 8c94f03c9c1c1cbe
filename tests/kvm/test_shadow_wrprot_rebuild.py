"""Guest PTE permissions in shadow paging, and the flush a shadow fault owes when it rebuilds an
MMU-writable SPTE without W while turning dirty logging on still owes its own flush."""

import pytest

from kvmlock import explore
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write, load_cr3, set_gpte, write_gpte
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS
from kvmlock.scenarios.shadow import _readonly_rebuild_vs_logging_on


def shadow_vm(**kw):
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    return vm


def test_a_read_only_guest_pte_maps_read_only_and_not_mmu_writable():
    vm = shadow_vm()
    v0 = vm.vcpus[0]
    set_gpte(vm, 0, 1, writable=False)
    assert guest_read(v0, 0) == 0
    spte = vm.mmu.sptep(0).peek()
    assert S.is_present(spte) and not spte & (S.W | S.MMU_WRITABLE), S.describe(spte)
    with pytest.raises(GuestFault, match="guest_fault"):
        guest_write(v0, 0, 5)  # the guest's own protection fault: nothing written
    assert vm.host.contents(1) == 0
    set_gpte(vm, 0, 1)  # near miss: the same page mapped writable takes the write
    guest_write(v0, 0, 5)
    assert vm.host.contents(1) == 5 and S.is_writable(vm.mmu.sptep(0).peek())
    vm.check()


def test_the_sync_drops_a_writable_spte_whose_guest_pte_became_read_only():
    vm = shadow_vm()
    v0 = vm.vcpus[0]
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 5)
    guest_write(v0, 1, 6)
    write_gpte(v0, 0, 1, writable=False)  # exits once: the page goes unsync
    write_gpte(v0, 1, 2)  # near miss: the same entry again, still writable
    load_cr3(v0)
    assert not S.is_present(vm.mmu.sptep(0).peek()), "page 0's SPTE allowed a write"
    assert S.is_writable(vm.mmu.sptep(1).peek()), "page 1's SPTE matches the guest"
    vm.check()


def test_the_check_sees_an_spte_allowing_more_than_a_synced_guest_pte():
    vm = shadow_vm()
    v0 = vm.vcpus[0]
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 5)
    vm.mmu.gpt[0].store(vm.mmu.gpt[0].peek() | 1 << 40)  # behind KVM's back
    with pytest.raises(AssertionError, match="the guest maps that page read-only"):
        vm.check()


def test_turning_logging_on_keeps_mmu_writable_and_flushes():
    vm = shadow_vm()
    v0 = vm.vcpus[0]
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 5)
    flushes = vm.stats["tlb_flushes"]
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    spte = vm.mmu.sptep(0).peek()
    assert not S.is_writable(spte) and S.is_mmu_writable(spte), S.describe(spte)
    assert vm.stats["tlb_flushes"] == flushes + 1 and not v0.tlb


def test_a_fault_that_ignores_the_flush_lets_a_stale_translation_write_a_shadowed_table():
    sc = SCENARIOS["shadow.readonly_rebuild_vs_logging_on.correct"]
    assert verify.run_scenario(sc).met
    with applied("shadow_fault_wrprot_no_flush"):
        out = verify.run_scenario(sc)
    assert out.failure is not None and out.failure.kind == "assertion"
    assert "wrote guest page 0 (gfn 1) through a writable translation" in out.failure.message


def test_a_rebuild_that_keeps_mmu_writable_needs_no_flush_of_its_own():
    # near miss: the guest keeps page 0 writable, so the rebuilt SPTE stays MMU-writable and
    # the vCPU that shadows gfn 1 takes it away and flushes for itself
    with applied("shadow_fault_wrprot_no_flush"):
        out = explore.check(lambda: _readonly_rebuild_vs_logging_on(False, readonly=False),
                            max_runs=5000)
    assert out.ok and out.exhausted, out.headline()
