"""The fast zap of TDP roots: roots, their references, the vCPU's reload, and the near misses."""

import pytest

from kvmlock import explore, lockdep
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.nx_recovery import recover_nx_huge_page
from kvmlock.kvm.mmu.shadow import ShadowPage, TdpRoot
from kvmlock.kvm.mmu.tdp_mmu import check_roots, update_nx_huge_pages, zap_all_fast
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.fast_zap import recovery_vs_fast_zap
from kvmlock.sync import peek


def two_slot_vm(**kw):
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=3, slot_zap_all=True, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.set_memory_region(1, base_gfn=1, npages=1, hva=1)
    return vm


def test_deleting_a_slot_fast_zaps_every_root_and_each_vcpu_reloads():
    vm = two_slot_vm()
    v0, v1 = vm.vcpus
    guest_write(v0, 0, 5)
    guest_write(v1, 1, 6)
    old = vm.mmu.root
    table = vm.mmu.walk(0)[0]
    assert old.refcount == 3, "the MMU's reference and one per vCPU"
    vm.set_memory_region(1, npages=0)
    assert old.invalid and not old.scheduled and vm.mmu.root is None
    assert all(sp is None for sp in old.pages), "the zap cleared every entry of the old root"
    assert table.removed and table.freed and peek(vm.mmu, "page_list") == []
    assert old.refcount == 2 and not old.freed, "each vCPU still holds it, until it reloads"
    assert all(v.requests for v in vm.vcpus)
    vm.check()
    assert guest_read(v0, 0) == 5  # vcpu0 serves its request: puts the old root, loads a new
    new = vm.mmu.root
    assert new is not old and v0.root is new and new.refcount == 2 and old.refcount == 1
    with pytest.raises(GuestFault):
        guest_read(v1, 1)  # vcpu1 reloads too; its slot is gone
    assert old.freed and old not in vm.mmu.roots and v1.root is new and new.refcount == 3
    vm.check()
    assert lockdep.reports() == []


def test_the_default_vm_zaps_only_the_deleted_slot():
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.set_memory_region(1, base_gfn=1, npages=1, hva=1)
    v = vm.vcpus[0]
    guest_write(v, 0, 5)
    guest_write(v, 1, 6)
    root = vm.mmu.root
    vm.set_memory_region(1, npages=0)
    assert vm.mmu.root is root and not root.invalid and not v.requests
    assert S.is_present(vm.mmu.sptep(0).peek()) and not S.is_present(vm.mmu.sptep(1).peek())


def test_recovery_that_lost_the_entry_to_the_zap_leaves_the_table_alone():
    vm = two_slot_vm()
    guest_write(vm.vcpus[0], 0, 5)
    table = vm.mmu.walk(0)[0]
    assert vm.mmu.clear_parent(table), "the zap's cmpxchg won (its handling comes next)"
    assert not recover_nx_huge_page(vm, 0), "recovery's cmpxchg finds the entry changed"
    assert not table.removed and not table.freed


@pytest.mark.parametrize("shared", [True, False])
def test_zapping_invalidated_roots_under_either_mode_races_recovery_cleanly(shared):
    """The near miss: under write mode the zap excludes recovery, under read mode the cmpxchg
    decides; both are correct and the exploration proves it for every interleaving."""
    res = explore.check(lambda: recovery_vs_fast_zap(shared=shared), max_runs=5000)
    assert res.ok and res.exhausted, res.failure


@pytest.mark.parametrize("mutant", ["recover_parent_load_store", "fast_zap_plain_store"])
def test_a_non_atomic_clear_of_the_parent_removes_the_table_twice(mutant):
    res = explore.check(lambda: recovery_vs_fast_zap({mutant: True}), max_runs=5000)
    assert not res.ok and res.failure.kind == "assertion"
    assert "removed twice" in res.failure.message or "freed twice" in res.failure.message


def test_check_roots_sees_a_lost_reference_and_a_table_left_behind():
    vm = two_slot_vm()
    guest_write(vm.vcpus[0], 0, 5)
    check_roots(vm)  # near miss: the MMU's reference and the two vCPUs'
    vm.mmu.root.refcount -= 1
    with pytest.raises(AssertionError, match=r"TDP root 0 has 2 reference\(s\), 3 held"):
        check_roots(vm)
    vm.mmu.root.refcount += 1
    vm.mmu.root.invalid = True  # invalidated, its zap done, yet a table still hangs in it
    with pytest.raises(AssertionError, match="still points at a table after its zap"):
        check_roots(vm)


def test_fast_zap_needs_the_tdp_mmu_and_slots_lock():
    with pytest.raises(ValueError, match="TDP MMU"):
        zap_all_fast(VM(nr_vcpus=1, nr_pages=2, tdp=False))
    vm = two_slot_vm()
    with lockdep.isolated():
        zap_all_fast(vm)
        assert [r.kind for r in lockdep.reports()] == ["not_held"]


def test_check_roots_sees_a_table_that_outlived_its_root():
    vm = two_slot_vm()
    guest_write(vm.vcpus[0], 0, 5)
    table = vm.mmu.walk(0)[0]
    check_roots(vm)  # near miss: the table hangs in the listed root
    for v in vm.vcpus:
        v.root = None  # (so only the leak is left to report)
    vm.mmu.roots.remove(table.parent)
    with pytest.raises(AssertionError, match="shadow page 0 hangs in TDP root 0, which was "
                                             "taken off the list.*a leaked table"):
        check_roots(vm)


def test_changing_nx_huge_pages_fast_zaps_the_vm():
    vm = two_slot_vm()
    guest_write(vm.vcpus[0], 0, 5)
    old = vm.mmu.root
    update_nx_huge_pages(vm)
    assert old.invalid and vm.stats["fast_zaps"] == 1
    assert guest_read(vm.vcpus[0], 0) == 5 and vm.vcpus[0].root is vm.mmu.root is not old
    vm.check()


# ------------------------------------------- a notifier in the window before the zap of roots

def _in_the_window(hazards=None, between=lambda host: host.swap_out(0)):
    """gfn 0 written (a Dirty SPTE in root 0), the roots invalidated as the fast zap's write-mode
    section leaves them, and ``between`` (the page swapped out) before the zap of invalidated
    roots."""
    from kvmlock.kvm.mmu.tdp_mmu import (
        FREE_OBSOLETE_ROOTS,
        _invalidate_all_roots,
        zap_invalidated_roots,
    )

    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, hazards=hazards)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 7)
    root = vm.mmu.root
    table = root.pages[0]
    with vm.slots_lock, vm.mmu_lock.write():  # zap_all_fast's write-mode section
        _invalidate_all_roots(vm)
        v0.make_request(FREE_OBSOLETE_ROOTS)
        found = vm.mmu.gfn_sptes(0)
    between(vm.host)
    zap_invalidated_roots(vm)
    return vm, v0, (root, table), found


def test_the_notifier_drops_the_spte_an_invalidated_root_still_holds():
    vm, v0, (root, table), found = _in_the_window()
    assert root.invalid and found == [(table, 0)]
    assert vm.host.stats["writeback"] == 1, "the Dirty bit reached the page before the free"
    assert guest_read(v0, 0) == 7
    vm.check()


def test_walking_only_the_valid_root_loses_the_write_at_swap_out():
    def swap_out(host):
        host.swap_out(0)
        assert host.stats["writeback"] == 0, "the page was freed clean"
        assert host.contents(0) == 0, "the write through the invalidated root's SPTE is lost"

    # and the zap of the invalidated root then passes the SPTE's bits to the freed frame
    with pytest.raises(AssertionError, match="Accessed passed to frame 0, which the host has "
                                             "freed"):
        _in_the_window({"gfn_sptes_valid_root_only"}, between=swap_out)


def test_walking_only_the_valid_root_is_harmless_once_the_roots_are_zapped():
    # The near miss: the swap-out after the whole fast zap. The zap passed the Dirty bit on
    # when it removed the table, so the swap-out writes the page back; no invalid root holds
    # an SPTE by then.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, hazards={"gfn_sptes_valid_root_only"})
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 7)
    update_nx_huge_pages(vm)
    vm.host.swap_out(0)
    assert guest_read(v0, 0) == 7
    vm.check()


def _exhausted_then_caught(scenario: str, mutant: str) -> str:
    """The correct row explores clean to exhaustion, and fails an assertion with ``mutant``
    applied: that failure's message."""
    from kvmlock.kvm.mutants import applied
    from kvmlock.scenarios import verify
    from kvmlock.scenarios.registry import SCENARIOS

    sc = SCENARIOS[scenario]
    ok = verify.run_scenario(sc)
    assert ok.met and ok.exhausted, (ok.runs, ok.failure)
    with applied(mutant):
        out = verify.run_scenario(sc)
    assert out.failure is not None and out.failure.kind == "assertion"
    return str(out.failure.message)


def test_the_fast_zap_racing_a_swap_out_is_explored_into_the_window():
    msg = _exhausted_then_caught("memslots.fast_zap_vs_swap_out.correct",
                                 "gfn_sptes_valid_root_only")
    assert "Accessed passed to frame 0, which the host has freed" in msg


def test_the_release_in_the_window_zaps_the_invalidated_root_before_the_host_frees():
    vm, _, (root, table), _ = _in_the_window(between=lambda host: host.exit_mmap())
    assert root.invalid and table.removed and all(sp is None for sp in root.pages)
    assert vm.host.notifiers == [] and vm.host.pfn_of(0) is None
    assert vm.host.pages[0].flags.peek() == 0, "nothing reached the frame after its free"
    vm.check()


def test_a_release_that_skips_invalid_roots_leaves_an_spte_to_a_freed_frame():
    with pytest.raises(AssertionError, match="Accessed passed to frame 0, which the host has "
                                             "freed"):
        _in_the_window({"zap_all_skips_invalid_roots"}, between=lambda host: host.exit_mmap())


def test_skipping_invalid_roots_is_harmless_once_the_roots_are_zapped():
    # The near miss: the VMM exits after the whole fast zap, which already dropped the
    # invalidated root's SPTE; the release finds nothing left in an invalid root.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, hazards={"zap_all_skips_invalid_roots"})
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    guest_write(vm.vcpus[0], 0, 7)
    update_nx_huge_pages(vm)
    assert vm.host.exit_mmap() == 1
    vm.check()


def test_the_release_racing_a_fast_zap_is_explored_into_the_window():
    msg = _exhausted_then_caught("tdp_mmu.release_vs_fast_zap.correct",
                                 "zap_all_skips_invalid_roots")
    assert "which the host has freed" in msg


def _second_valid_root(vm, vcpu):
    """What two vCPUs leave when both found no valid root and the second did not look again
    under tdp_mmu_pages_lock: a second valid root of the same role, on tdp_mmu_roots."""
    mmu = vm.mmu
    mmu.root_gen += 1
    root = TdpRoot([None] * len(mmu.pages), mmu.root_gen, refcount=2)
    mmu.roots.append(root)
    mmu.root, mmu.pages = root, root.pages
    vcpu.root = root
    return root


def test_a_second_valid_root_is_wasteful_not_wrong_and_every_zap_reaches_it():
    vm = two_slot_vm()
    v0, v1 = vm.vcpus
    guest_write(v0, 0, 5)
    first = v0.root
    v1.root.refcount -= 1  # vcpu1 let go of the first root before loading its own
    second = _second_valid_root(vm, v1)
    guest_write(v1, 0, 6)  # a table for region 0 in each root
    assert first.pages[0] is not None and second.pages[0] is not None
    vm.check()  # near miss: two roots, each table linked once in its own root, all reachable
    assert guest_read(v0, 0) == 6
    assert all(S.is_present(r.pages[0].sptes[0].peek()) for r in (first, second))
    vm.host.swap_out(0)  # the notifier's zap walks every root: neither keeps the old frame
    assert not any(S.is_present(r.pages[0].sptes[0].peek()) for r in (first, second))
    vm.check()
    assert guest_read(v0, 0) == 6 and guest_read(v1, 0) == 6


def test_check_pages_sees_two_tables_linked_for_one_region_of_one_root():
    vm = two_slot_vm()
    guest_write(vm.vcpus[0], 0, 5)
    vm.mmu.check_pages()  # near miss: one table per region of the root
    table = vm.mmu.walk(0)[0]
    with lockdep.isolated():
        vm.mmu.page_list.append(ShadowPage(table.index, direct=True, parent=table.parent))
    with pytest.raises(AssertionError, match=r"region \[0\] were built and linked twice in "
                                             "one root"):
        vm.mmu.check_pages()
