"""The shadow MMU frees its pages: prepare-zap under mmu_lock, remote flush, free. What each
step leaves behind, and that a use of a freed page is seen (the model's KASAN)."""

import pytest

from kvmlock.kvm.guest import guest_read, guest_write, load_cr3, set_gpte, write_gpte
from kvmlock.kvm.host import PG_DIRTY
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.vm import VM


def shadow_vm(**kw):
    vm = VM(nr_vcpus=1, nr_pages=4, host_pages=4, tdp=False, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    return vm, vm.vcpus[0]


def test_zap_all_frees_every_page_and_a_fault_builds_it_again():
    vm, v0 = shadow_vm()
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 11)
    sp = vm.mmu.pages[0]
    flushes = vm.stats["tlb_flushes"]
    assert vm.mmu.zap_all() == 1
    assert sp.freed and vm.mmu.pages[0] is None and not vm.mmu.page_list
    assert not vm.mmu.rmap, "every dropped SPTE left its gfn's rmap"
    assert vm.stats["tlb_flushes"] == flushes + 1, "one flush, before the free"
    flags = vm.host.pages[vm.host.pfn_of(1)].flags.peek()
    assert flags & PG_DIRTY, "the dropped SPTE's Dirty bit reached the page"
    vm.check()
    assert guest_read(v0, 0) == 11, "the next access faults and builds the page again"
    rebuilt = vm.mmu.pages[0]
    assert rebuilt is not sp and not rebuilt.freed and vm.mmu.page_list == [rebuilt]
    vm.check()
    assert vm.mmu.zap_all() == 1 and vm.mmu.zap_all() == 0, "near miss: nothing left to zap"


def test_zap_of_an_unsync_page_undoes_its_unsync_accounting():
    vm, v0 = shadow_vm()
    set_gpte(vm, 0, 1)
    guest_read(v0, 0)
    write_gpte(v0, 3, 3)  # the first store exits: unsync, table writable
    assert vm.mmu.unsync_count == 1
    vm.mmu.zap_all()
    assert vm.mmu.unsync_count == 0
    vm.check()
    write_gpte(v0, 0, 2)  # the table is shadowed again, write-protected: this store exits
    assert vm.mmu.pages[0].unsync and vm.mmu.unsync_count == 1
    load_cr3(v0)
    assert guest_read(v0, 0) == 0, "page 0 now names gfn 2, never written"
    vm.check()


def test_zap_keeps_unsync_accounted_is_seen_by_the_check():
    vm, v0 = shadow_vm(hazards={"zap_keeps_unsync_accounted": True})
    set_gpte(vm, 0, 1)
    write_gpte(v0, 3, 3)
    vm.mmu.zap_all()
    with pytest.raises(AssertionError, match="unsync_count is 1 but 0 page"):
        vm.check()


def test_a_freed_page_is_caught_when_used():
    vm, v0 = shadow_vm()
    set_gpte(vm, 0, 1)
    guest_read(v0, 0)
    sp = vm.mmu.pages[0]
    vm.mmu.check_live(sp, "near miss")  # live: no complaint
    vm.mmu.zap_all()
    assert all(s.peek() == 0 for s in sp.sptes)
    with pytest.raises(AssertionError, match="used shadow page 0 after it was zapped and freed"):
        vm.mmu.check_live(sp, "a walker that kept it")


def test_set_gpte_after_a_zap_shadows_the_table_again():
    vm, v0 = shadow_vm()
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 11)
    vm.mmu.zap_all()
    set_gpte(vm, 1, 1)
    assert vm.mmu.pages[0] is not None and not vm.mmu.pages[0].freed
    assert guest_read(v0, 1) == 11
    vm.check()


def test_tdp_with_the_shadow_mmu_takes_the_fast_path_and_zaps_the_shadow_way():
    from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
    from kvmlock.kvm.mmu.dirty_log import get_dirty_log

    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, tdp_mmu=False)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    v0 = vm.vcpus[0]
    guest_read(v0, 0)  # the slow path, under write-mode mmu_lock: read-only, MMU-writable
    assert vm.mmu.pages[0].direct and S.is_mmu_writable(vm.mmu.sptep(0).peek())
    guest_write(v0, 0, 5)
    assert v0.stats["fast_pf"] == 1, "the write is fixed by the fast path"
    assert not v0.reading_shadow, "the walk ended: a remote flush would not wait"
    assert get_dirty_log(vm, 0) == [0]
    sp = vm.mmu.pages[0]
    assert vm.mmu.zap_all() == 1 and sp.freed
    assert guest_read(v0, 0) == 5
    vm.check()


@pytest.mark.parametrize("kw", [{"tdp": 0}, {"tdp_mmu": "no"}, {"tdp_mmu": None}])
def test_mmu_flags_are_booleans(kw):
    """``VM(tdp_mmu="no")`` would silently build the TDP MMU (a non-empty string is true):
    a flag that picks the MMU is refused unless it is a bool."""
    with pytest.raises(ValueError, match="must be True or False"):
        VM(nr_vcpus=1, nr_pages=2, **kw)
