"""Fault paths, SPTE updates, dirty logging, access tracking and NX huge-page recovery on real
threads."""

import pytest

from kvmlock import lockdep
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write, set_gpte, write_gpte
from kvmlock.kvm.host import PG_DIRTY
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.dirty_log import MigrationCopy, get_dirty_log
from kvmlock.kvm.mmu.nx_recovery import recover_nx_huge_page
from kvmlock.kvm.mmu.update import spte_clear_track_bits, spte_update
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS


def logged_vm(**kw):
    vm = VM(nr_vcpus=1, nr_pages=4, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
    return vm, vm.vcpus[0]


def test_read_then_write_under_logging_takes_the_fast_path_and_logs():
    vm, v = logged_vm()
    assert guest_read(v, 1) == 0
    ro = vm.mmu.sptep(1).peek()
    assert not S.is_writable(ro) and S.is_mmu_writable(ro), "read fault: write-protected"
    guest_write(v, 1, 42)
    assert v.stats["fast_pf"] == 1 and v.stats["slow_pf"] == 1
    assert S.is_writable(vm.mmu.sptep(1).peek())
    assert vm.mmu.sptep(1).peek() & S.DIRTY, "the CPU set Dirty on the write"
    assert get_dirty_log(vm, 0) == [1]
    assert guest_read(v, 1) == 42
    assert lockdep.reports() == []


def test_fast_path_refuses_indirect_shadow_pages_unless_the_hazard_is_on():
    for hazard, fast in ((False, 0), (True, 1)):
        vm = VM(nr_vcpus=1, nr_pages=4, tdp=False, hazards={"fast_pf_indirect": hazard})
        vm.set_memory_region(0, base_gfn=0, npages=4, hva=0, flags=LOG_DIRTY_PAGES)
        set_gpte(vm, 0, 2)
        v = vm.vcpus[0]
        guest_read(v, 0)
        guest_write(v, 0, 9)
        assert v.stats["fast_pf"] == fast
        assert get_dirty_log(vm, 0) == [2]
        assert vm.host.contents(2) == 9


def test_guest_pte_store_exits_once_then_the_page_is_unsync_and_the_store_plain():
    vm = VM(nr_vcpus=1, nr_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v = vm.vcpus[0]
    set_gpte(vm, 0, 1)
    guest_write(v, 0, 5)
    sp = vm.mmu.pages[0]
    assert not sp.unsync and not sp.gpt_writable, "set_gpte leaves the page in sync"
    write_gpte(v, 1, 2)  # the table is write-protected: this store exits, the page goes unsync
    assert sp.unsync and sp.gpt_writable and vm.mmu.unsync_count == 1
    write_gpte(v, 0, 2)  # a plain store now: the SPTE still maps gfn 1, which is allowed
    assert sp.unsync and S.pfn_of(vm.mmu.sptep(0).peek()) == vm.host.pfn_of(1)
    vm.check()  # an unsync page may lag behind the guest's table
    guest_write(v, 0, 6)  # SPTE writable: the stale translation still works until a flush
    assert vm.host.contents(1) == 6
    set_gpte(vm, 0, 2)  # the guest's INVLPG syncs this entry; the page stays unsync
    assert sp.unsync and not S.is_present(vm.mmu.sptep(0).peek())
    assert guest_read(v, 0) == 0 and vm.host.contents(2) == 0
    vm.check()
    with pytest.raises(ValueError, match="write_gpte: gfn must be"):
        write_gpte(v, 0, -1)
    tdp = VM(nr_vcpus=1, nr_pages=4)
    with pytest.raises(ValueError, match="write_gpte: the VM uses TDP"):
        write_gpte(tdp.vcpus[0], 0, 1)


def test_only_an_unsync_page_may_lag_behind_the_guest_table():
    """Near miss of the exemption: the same stale SPTE in a page that is in sync is reported."""
    vm = VM(nr_vcpus=1, nr_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    set_gpte(vm, 0, 1)
    guest_read(vm.vcpus[0], 0)
    vm.mmu.gpt[0].store(3)  # page 0 -> gfn 2 behind KVM's back, the page still in sync
    with pytest.raises(AssertionError, match="the guest maps that page to gfn 2"):
        vm.check()
    vm.mmu.pages[0].unsync = True
    vm.mmu.unsync_count = 1
    vm.check()


def test_shadow_paging_unmapped_guest_page_is_a_guest_fault():
    vm = VM(nr_vcpus=1, nr_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    with pytest.raises(GuestFault, match="guest_fault"):
        guest_read(vm.vcpus[0], 3)


def test_spte_update_asks_for_flush_when_w_goes_away_and_propagates_dirty():
    vm, v = logged_vm()
    guest_write(v, 0, 1)
    sptep = vm.mmu.sptep(0)
    cur = sptep.peek()
    # near miss: an update that keeps W and the A/D bits needs no flush
    with vm.mmu_lock.write():
        assert spte_update(vm, sptep, cur) is False
    with vm.mmu_lock.write():
        assert spte_update(vm, sptep, cur & ~S.W) is True
    pfn = S.pfn_of(cur)
    with vm.mmu_lock.write():
        spte_clear_track_bits(vm, sptep)
    assert vm.host.pages[pfn].flags.peek() & PG_DIRTY


def test_skip_flush_hazard_silences_the_flush_request():
    vm, v = logged_vm(hazards={"skip_tlb_flush_on_wrprot": True})
    guest_write(v, 0, 1)
    sptep = vm.mmu.sptep(0)
    with vm.mmu_lock.write():
        assert spte_update(vm, sptep, sptep.peek() & ~S.W) is False


def test_harvest_write_protects_flushes_and_relogs_the_next_write():
    vm, v = logged_vm()
    mig = MigrationCopy(vm, 0)
    guest_write(v, 2, 5)
    assert 2 in v.tlb and v.tlb[2].writable
    assert mig.round() == [2]
    assert v.tlb == {}, "write-protection flushed the TLB"
    assert not S.is_writable(vm.mmu.sptep(2).peek())
    guest_write(v, 2, 6)
    assert mig.round() == [2]
    assert mig.mismatches() == []


def test_stale_tlb_write_goes_unlogged_when_the_flush_is_skipped():
    vm, v = logged_vm(hazards={"skip_tlb_flush_on_wrprot": True})
    mig = MigrationCopy(vm, 0)
    guest_write(v, 2, 5)
    mig.round()
    guest_write(v, 2, 6)  # through the stale writable TLB entry
    assert mig.round() == []
    assert mig.mismatches() == [(2, 6, 5)]


def test_dirty_log_errors_name_the_problem():
    vm = VM(nr_vcpus=1, nr_pages=4)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    with pytest.raises(ValueError, match="does not have dirty logging on"):
        get_dirty_log(vm, 0)
    with pytest.raises(ValueError, match="slot 3 does not exist"):
        get_dirty_log(vm, 3)


def test_access_tracking_round_trip():
    vm = VM(nr_vcpus=1, nr_pages=2, ad_disabled=True)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    v = vm.vcpus[0]
    guest_write(v, 0, 3)
    assert vm.host.age(0) is True
    assert S.is_access_track(vm.mmu.sptep(0).peek())
    assert vm.host.pages[vm.host.pfn_of(0)].flags.peek() & PG_DIRTY, "W's dirtiness kept"
    assert vm.host.age(0) is False, "not used since: not young"
    assert guest_read(v, 0) == 3
    after_read = vm.mmu.sptep(0).peek()
    assert not S.is_access_track(after_read) and not S.is_writable(after_read)
    assert v.stats["fast_pf"] == 1, "the fast path restored the tracked SPTE"
    guest_write(v, 0, 4)
    assert S.is_writable(vm.mmu.sptep(0).peek())


def test_swap_out_writes_back_dirty_pages_and_swap_in_restores_them():
    vm = VM(nr_vcpus=1, nr_pages=4, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v = vm.vcpus[0]
    for va in range(4):
        guest_write(v, va, 10 + va)
    assert vm.host.stats["swap_out"] >= 2, "two frames for four pages: reclaim happened"
    assert [guest_read(v, va) for va in range(4)] == [10, 11, 12, 13]
    assert lockdep.reports() == []


def test_mmu_subordinate_locks_need_mmu_lock():
    vm = VM(nr_vcpus=1, nr_pages=8)
    from kvmlock.kvm.mmu.shadow import ShadowPage

    sp = ShadowPage(0, direct=True)
    for call in (vm.mmu.link_page, vm.mmu.mark_unsync):
        call(sp)
        bad = [r.lock for r in lockdep.reports() if r.kind == "not_held"]
        assert bad == ["kvm->mmu_lock"], call.__name__
        lockdep.reset()
    with vm.mmu_lock.write():  # near miss: the same calls with mmu_lock held
        vm.mmu.link_page(sp)
        vm.mmu.mark_unsync(sp)
    assert lockdep.reports() == []


def test_bad_inputs_are_clear_errors():
    vm = VM(nr_vcpus=1, nr_pages=4)
    with pytest.raises(ValueError, match="overlap slot 0"):
        vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
        vm.set_memory_region(1, base_gfn=1, npages=2, hva=2)
    with pytest.raises(ValueError, match="unknown flags"):
        vm.set_memory_region(2, base_gfn=2, npages=1, hva=2, flags=8)
    with pytest.raises(ValueError, match="exceed the host"):
        vm.set_memory_region(2, base_gfn=2, npages=9, hva=2)
    with pytest.raises(ValueError, match="outside the guest address space"):
        guest_read(vm.vcpus[0], 99)
    with pytest.raises(ValueError, match="non-negative integer"):
        guest_write(vm.vcpus[0], 0, -1)
    with pytest.raises(ValueError, match="unknown hazard"):
        VM(hazards={"no_such_bug": True})
    with pytest.raises(GuestFault, match="not backed"):
        guest_read(vm.vcpus[0], 3)


def test_tdp_fault_holds_mmu_lock_for_read_and_builds_pages_under_pages_lock():
    vm = VM(nr_vcpus=1, nr_pages=4)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    guest_write(vm.vcpus[0], 2, 1)
    edges = {(e.src, e.dst, e.src_read) for e in lockdep.graph().edges}
    assert ("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock", 2) in edges, edges
    assert len(vm.mmu.page_list) == 1
    vm.mmu.check_pages()
    # shadow paging builds its pages with mmu_lock held for write instead
    sh = VM(nr_vcpus=1, nr_pages=4, tdp=False)
    sh.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    set_gpte(sh, 0, 1)
    edges = {(e.src, e.dst, e.src_read) for e in lockdep.graph().edges}
    assert ("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock", 0) in edges


def test_host_refuses_bad_addresses_and_sizes():
    from kvmlock.kvm.host import Host

    with pytest.raises(ValueError, match="at least one page frame"):
        Host(nr_pages=0)
    h = Host(nr_pages=2, nr_hva=4)
    with pytest.raises(ValueError, match="outside the host address space"):
        h.fault_in(4)
    with pytest.raises(ValueError, match="outside the host address space"):
        h.swap_out(-1)
    assert h.swap_out(0) is False, "nothing mapped there: nothing to swap"
    with pytest.raises(TypeError, match="kvmlock.kvm.host.Host"):
        VM(host=object())


def test_the_host_frees_every_page_at_exit_and_flags_a_freed_frame_as_a_bug():
    from kvmlock.kvm.host import PG_DIRTY, Host

    class Notifier:
        released = 0

        def release(self):
            assert h.pfn_of(0) is not None, "release runs before the pages go"
            self.released += 1

    h = Host(nr_pages=2)
    n = Notifier()
    h.register(n)  # type: ignore[arg-type]
    pfn = h.fault_in(0)
    h.set_page_dirty(pfn)  # a mapped page: fine
    assert h.pages[pfn].flags.peek() & PG_DIRTY
    assert h.exit_mmap() == 1 and n.released == 1 and h.notifiers == []
    assert h.pfn_of(0) is None and h.pages[pfn].flags.peek() == 0
    with pytest.raises(AssertionError, match=f"Dirty passed to frame {pfn}, which the host has "
                                             "freed"):
        h.set_page_dirty(pfn)
    with pytest.raises(AssertionError, match="Accessed passed to frame"):
        h.set_page_accessed(pfn)
    assert h.exit_mmap() == 0, "nothing left to free, nobody left to tell"
    assert n.released == 1


def test_turning_logging_off_frees_the_bitmap_and_on_again_gets_a_fresh_one():
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    first = vm.memslots.access_pointer().by_id(0).dirty_bitmap
    vm.set_memory_region(0, base_gfn=1, npages=2, hva=0, flags=LOG_DIRTY_PAGES)  # a move
    assert vm.memslots.access_pointer().by_id(0).dirty_bitmap is first and not first.freed
    vm.set_memory_region(0, base_gfn=1, npages=2, hva=0)
    assert first.freed and vm.memslots.access_pointer().by_id(0).dirty_bitmap is None
    with pytest.raises(ValueError, match="does not have dirty logging on"):
        get_dirty_log(vm, 0)
    vm.set_memory_region(0, base_gfn=1, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    again = vm.memslots.access_pointer().by_id(0).dirty_bitmap
    assert again is not first and not again.freed
    guest_write(vm.vcpus[0], 1, 5)
    assert get_dirty_log(vm, 0) == [1]
    vm.set_memory_region(0, npages=0)
    assert again.freed


def test_aging_flushes_only_when_it_takes_w_away():
    """Clearing Accessed flushes nothing (a cached translation makes the page look old, which
    the kernel tolerates); taking W from an A/D-disabled SPTE flushes, and without that flush
    a write after a harvest is lost to the dirty log."""
    vm, v = logged_vm()
    guest_write(v, 0, 1)
    flushes = vm.stats["tlb_flushes"]
    assert vm.host.age(0), "written since the SPTE was made: young"
    assert vm.stats["tlb_flushes"] == flushes and 0 in v.tlb, "Accessed cleared, no flush"
    guest_read(v, 0)  # through the cached translation: Accessed stays clear
    assert not vm.host.age(0), "the tolerated false negative: the CPU did not walk the SPTE"

    for broken in (False, True):
        vm, v = logged_vm(ad_disabled=True, hazards={"age_no_flush": broken})
        mig = MigrationCopy(vm, 0)
        guest_write(v, 0, 1)
        flushes = vm.stats["tlb_flushes"]
        assert vm.host.age(0)
        spte = vm.mmu.sptep(0).peek()
        assert not S.is_writable(spte) and S.is_mmu_writable(spte), S.describe(spte)
        assert (vm.stats["tlb_flushes"] == flushes) == broken
        mig.round()  # the SPTE is read-only already: this write-protection flushes nothing
        guest_write(v, 0, 2)
        mig.round()
        assert bool(mig.mismatches()) == broken, mig.mismatches()



def test_recovery_frees_the_table_passes_dirty_on_and_the_next_fault_rebuilds_it():
    vm, v = logged_vm()
    guest_write(v, 1, 7)
    sp = vm.mmu.walk(1)[0]
    pfn = S.pfn_of(sp.sptes[1].peek())
    vm.host.pages[pfn].flags.store(0)  # forget what the fault said: recovery must say it
    assert recover_nx_huge_page(vm, 1)
    assert sp.freed and vm.mmu.walk(1) is None
    assert all(s.peek() == S.FROZEN for s in sp.sptes), "every SPTE of the table frozen"
    assert vm.host.pages[pfn].flags.peek() & PG_DIRTY, "the SPTE's Dirty reached the page"
    assert not recover_nx_huge_page(vm, 1), "nothing left to recover"
    assert guest_read(v, 1) == 7 and vm.mmu.walk(1)[0] is not sp, "a fresh table"
    vm.check()
    assert lockdep.reports() == []


def test_harvest_after_recovery_still_logs_the_next_write():
    vm, v = logged_vm()
    guest_write(v, 0, 1)
    recover_nx_huge_page(vm, 0)
    assert get_dirty_log(vm, 0) == [0]
    guest_write(v, 0, 2)
    assert get_dirty_log(vm, 0) == [0]


def test_a_write_mode_writer_that_finds_a_frozen_spte_says_so():
    vm, v = logged_vm()
    guest_write(v, 0, 1)
    sptep = vm.mmu.sptep(0)
    live = sptep.peek()
    with vm.mmu_lock.write():
        assert spte_update(vm, sptep, live & ~S.W)  # near miss: a present SPTE is fine
        sptep.store(S.FROZEN)
        with pytest.raises(AssertionError, match="frozen under a writer"):
            spte_update(vm, sptep, live & ~S.W)
    assert S.describe(S.FROZEN) == "frozen" and not S.is_present(S.FROZEN)


@pytest.mark.parametrize("mutant", ["harvest_read_lock", "recover_freeze_plain_store",
                                    "recover_no_flush", "recover_free_no_grace_period"])
def test_each_weakened_protection_fails_by_its_consequence(mutant):
    """Not a lockdep report: a freed table touched, a write lost, a freed frame written."""
    name = ("dirty_log.harvest_vs_nx_recovery.correct" if mutant == "harvest_read_lock"
            else "nx_recovery.vs_write.correct")
    sc = SCENARIOS[name]
    assert verify.run_scenario(sc, timeout=120).failure is None
    with applied(mutant):
        out = verify.run_scenario(sc, timeout=120)
    assert out.failure is not None and out.failure.kind == "assertion", out.result
    assert any(w in out.failure.message for w in ("freed", "lost a write", "reads 0x0")), \
        out.failure.message


def test_nx_recovery_bad_inputs_are_clear_errors():
    vm = VM(nr_vcpus=1, nr_pages=4, tdp=False)
    with pytest.raises(ValueError, match="TDP MMU tables only"):
        recover_nx_huge_page(vm, 0)
    vm, _ = logged_vm()
    with pytest.raises(ValueError, match="outside the guest address space"):
        recover_nx_huge_page(vm, 99)


def test_a_removed_table_written_after_its_freeze_is_caught_at_the_free():
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.mmu.tdp_mmu import check_still_frozen

    sp = ShadowPage(0, direct=True)
    for sptep in sp.sptes:
        sptep.store(S.FROZEN)
    check_still_frozen(sp, "NX huge-page recovery")  # near miss: every SPTE still frozen
    sp.sptes[3].store(S.make(1, writable=False))  # a plain store that ignored the freeze
    with pytest.raises(AssertionError, match=r"written after its SPTEs were frozen \(spte\[3\]"):
        check_still_frozen(sp, "NX huge-page recovery")


def test_a_table_removed_or_freed_twice_is_a_bug_report():
    """The model's KASAN for page tables: one remover, one free, whoever tries second."""
    from kvmlock.kvm.mmu.shadow import ShadowPage

    sp = ShadowPage(0, direct=True)
    sp.mark_removed("first remover")  # near miss: one removal, then one free
    sp.free("its RCU callback")
    with pytest.raises(AssertionError, match=r"BUG: shadow page 0 freed twice \(second"):
        sp.free("second")
    other = ShadowPage(1, direct=True)
    other.mark_removed("first remover")
    with pytest.raises(AssertionError, match=r"BUG: shadow page 1 removed twice \(second "
                                             r"remover found it already removed\)"):
        other.mark_removed("second remover")
    with pytest.raises(AssertionError, match="found it already freed"):
        sp.mark_removed("late remover")


def test_recovery_and_zap_all_each_remove_and_free_a_table_once():
    vm, v = logged_vm()
    guest_write(v, 1, 7)
    sp = vm.mmu.walk(1)[0]
    assert recover_nx_huge_page(vm, 1)
    assert sp.removed and sp.freed
    guest_read(v, 1)
    again = vm.mmu.walk(1)[0]
    assert vm.mmu.zap_all() == 1
    assert again.removed and again.freed


def test_recovery_flushing_after_its_unlock_lets_swap_out_free_a_frame_a_tlb_maps():
    """Must-catch: the late flush fails the row by its consequence -- the vCPU reads a freed
    frame -- not by a lock report. Near miss: the correct row explores clean, exhaustively."""
    sc = SCENARIOS["nx_recovery.flush_vs_swap_out.correct"]
    ok = verify.run_scenario(sc, timeout=120)
    assert ok.failure is None and ok.met and ok.exhausted, ok.result
    with applied("recover_flush_after_unlock"):
        out = verify.run_scenario(sc, timeout=120)
    assert out.failure is not None and out.failure.kind == "assertion", out.result
    assert "which the host has freed" in out.failure.message, out.failure.message


def test_recovery_flushing_after_its_unlock_is_harmless_without_a_racing_invalidation():
    """Near miss: run one after the other, the late flush still empties the TLB before the
    swap-out, so the guest reads back what it wrote."""
    with applied("recover_flush_after_unlock"):
        vm, v = logged_vm()
    guest_write(v, 0, 5)
    assert recover_nx_huge_page(vm, 0)
    vm.host.swap_out(0)
    assert guest_read(v, 0) == 5
    vm.check()
