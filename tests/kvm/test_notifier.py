"""The MMU-notifier protocol: active count, invalidate retry, memslot updates waiting."""

import threading
import time

import pytest

import kvmlock
from kvmlock import lockdep
from kvmlock.kvm.guest import guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.page_fault import invalidate_retry
from kvmlock.kvm.vm import VM
from kvmlock.sync import peek


def vm_with_page(**kw):
    vm = VM(nr_vcpus=1, nr_pages=4, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    guest_write(vm.vcpus[0], 1, 3)
    return vm


def test_invalidation_counts_zaps_and_bumps_the_sequence():
    vm = vm_with_page()
    seq = vm.mmu_invalidate_seq.peek()
    token = vm.notifier.invalidate_range_start(1, 2)
    assert peek(vm, "mn_active_invalidate_count") == 1 and vm.mmu_invalidate_in_progress == 1
    assert not S.is_present(vm.mmu.sptep(1).peek()), "the SPTE was zapped"
    assert vm.vcpus[0].tlb == {}, "and the TLB flushed"
    with vm.mmu_lock.write():
        assert invalidate_retry(vm, seq, 1), "a fault on the range must retry"
        assert not invalidate_retry(vm, seq, 3), "near miss: other hvas, same sequence"
    vm.notifier.invalidate_range_end(1, 2, token)
    assert peek(vm, "mn_active_invalidate_count") == 0 and vm.mmu_invalidate_in_progress == 0
    assert vm.mmu_invalidate_seq.peek() == seq + 1
    with vm.mmu_lock.write():
        assert invalidate_retry(vm, seq, 3), "a fault that began before must retry"
        assert not invalidate_retry(vm, seq + 1, 3), "near miss: one that began after need not"
    assert lockdep.reports() == []


def test_range_outside_every_memslot_takes_no_mmu_lock():
    vm = VM(nr_vcpus=1, nr_pages=4)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    token = vm.notifier.invalidate_range_start(3, 4)
    assert vm.mmu_invalidate_in_progress == 0, "no memslot overlaps: nothing begun"
    vm.notifier.invalidate_range_end(3, 4, token)
    assert vm.mmu_invalidate_seq.peek() == 0
    assert "kvm->mmu_lock" not in lockdep.graph().classes


def test_memslot_update_waits_for_an_active_invalidation():
    vm = vm_with_page()
    token = vm.notifier.invalidate_range_start(1, 2)
    before = vm.memslots.access_pointer()
    done = threading.Event()

    def updater():
        vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
        done.set()

    t = kvmlock.spawn(updater)
    time.sleep(0.2)
    assert not done.is_set(), "swapped under an invalidation"
    assert vm.memslots.access_pointer() is before
    vm.notifier.invalidate_range_end(1, 2, token)  # wakes the updater
    t.join(timeout=10)
    assert done.is_set() and vm.memslots.access_pointer() is not before
    assert lockdep.reports() == []


def test_update_that_does_not_wait_is_caught_by_the_notifier():
    vm = vm_with_page(hazards={"swap_without_waiting": True})
    token = vm.notifier.invalidate_range_start(1, 2)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    with pytest.raises(AssertionError, match="memslots changed in the middle"):
        vm.notifier.invalidate_range_end(1, 2, token)


@pytest.mark.parametrize("hazard", ["notifier_takes_slots_lock", "notifier_uses_rwsem"])
def test_forbidden_notifier_designs_are_reported_by_lockdep(hazard):
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, hazards={hazard: True})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)  # slots_lock -> (reclaim) notifier
    guest_write(vm.vcpus[0], 0, 1)
    guest_write(vm.vcpus[0], 1, 2)
    vm.host.swap_out(0)  # notifier section -> slots_lock / -> rwsem, nested reclaim inside
    kinds = {r.kind for r in lockdep.reports()}
    assert "circular" in kinds, kinds


def test_correct_notifier_design_is_not_reported():
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    guest_write(vm.vcpus[0], 0, 1)
    guest_write(vm.vcpus[0], 1, 2)
    vm.host.swap_out(0)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    assert lockdep.reports() == []
    edges = {(e.src, e.dst) for e in lockdep.graph().edges}
    assert ("mmu_notifier_invalidate_range_start", "kvm->mn_invalidate_lock") in edges
    assert ("kvm->slots_lock", "mmu_notifier_invalidate_range_start") in edges
    assert not any(dst in ("kvm->slots_lock", "kvm->slots_arch_lock")
                   for src, dst in edges if src == "mmu_notifier_invalidate_range_start")


def _shadow_vm_with_root():
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.mmu.gpt[0].store(1)
    guest_write(vm.vcpus[0], 0, 1)  # the first shadow root: the slot gets its rmaps
    return vm


def test_notifier_zaps_through_the_slots_own_rmaps():
    # the handlers use slot->arch.rmap once a shadow root exists: freed arch data under a
    # slot the array still publishes (an invalid copy being deleted) is a use after free
    vm = _shadow_vm_with_root()
    (slot,) = vm.memslots.access_pointer().slots
    slot.arch.free()
    with pytest.raises(AssertionError, match="arch data .* used after it was freed"):
        vm.host.swap_out(0)


def test_notifier_zap_with_live_rmaps_drops_the_spte():
    vm = _shadow_vm_with_root()
    assert vm.host.swap_out(0)
    assert vm.mmu.sptep(0) is None or not S.is_present(vm.mmu.sptep(0).peek())
    vm.check()


def test_a_discarded_page_is_freed_poisoned_and_faults_back_in_zeroed():
    from kvmlock.kvm.guest import guest_read
    from kvmlock.kvm.host import POISON

    vm = vm_with_page()
    pfn = vm.host.pfn_of(1)
    assert vm.host.discard(1) is True
    assert vm.host.pages[pfn].data.peek() == POISON and vm.host.pfn_of(1) is None
    assert not S.is_present(vm.mmu.sptep(1).peek()), "the notifier zapped the SPTE"
    assert vm.host.discard(1) is False, "nothing left to discard"
    assert guest_read(vm.vcpus[0], 1) == 0, "MADV_DONTNEED: the next touch sees a zeroed page"
    vm.check()


def test_the_notifier_flushes_before_a_second_invalidation_can_free_the_frame():
    from kvmlock.kvm.mutants import applied
    from kvmlock.scenarios import verify
    from kvmlock.scenarios.registry import SCENARIOS

    sc = SCENARIOS["mmu_notifier.flush_under_mmu_lock.correct"]
    assert verify.run_scenario(sc).met  # near miss: the flush under mmu_lock
    with applied("notifier_flush_after_unlock"):
        out = verify.run_scenario(sc)
    assert out.failure is not None and out.failure.kind == "assertion"
    assert "which the host has freed" in str(out.failure.message)
    assert verify.run_scenario(SCENARIOS["mmu_notifier.flush_under_mmu_lock.broken"]).met
