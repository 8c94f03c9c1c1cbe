"""Write tracking of shadowed guest page tables, and the first shadow root's rmaps: what
MMU-writable decides, the invariants that see a bypassed write-protection, and the races."""

import dataclasses

import pytest

from kvmlock import lockdep
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write, nested_guest_walk, set_gpte
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.page_fault import page_fault
from kvmlock.kvm.mmu.page_track import (
    WRITE_FLOODING_LIMIT,
    account_shadowed,
    emulate_write,
    shadow_guest_table,
)
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS


def logged_vm(**kw):
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    return vm, vm.vcpus[0]


def test_dirty_logging_keeps_mmu_writable_so_the_fast_path_fixes_the_write():
    # the near miss of fast_pf_ignore_mmu_writable: W clear but MMU-writable set is the fast
    # path's job, and the write reaches memory through the hardware
    vm, v = logged_vm()
    guest_read(v, 1)
    guest_write(v, 1, 7)
    assert v.stats["fast_pf"] == 1 and vm.stats["emulated_writes"] == 0
    vm.check()
    assert vm.host.contents(1) == 7


def test_shadowing_clears_w_and_mmu_writable_and_the_next_write_is_emulated():
    vm, v = logged_vm()
    guest_write(v, 1, 1)  # read, then fast-path write: gfn 1 is writable and cached
    assert S.is_writable(vm.mmu.sptep(1).peek()) and v.tlb[1].writable
    flushes = vm.stats["tlb_flushes"]
    shadow_guest_table(vm.vcpus[1], 1)
    spte = vm.mmu.sptep(1).peek()
    assert S.is_present(spte) and not spte & (S.W | S.MMU_WRITABLE), S.describe(spte)
    assert S.is_host_writable(spte), "the host still maps the page writable"
    assert vm.stats["tlb_flushes"] == flushes + 1 and not v.tlb, "flushed before relied on"
    assert vm.shadow_root_allocated.peek() == 1, "the first shadow root allocated the rmaps"
    fast = v.stats["fast_pf"]
    guest_write(v, 1, 2)
    assert v.stats["fast_pf"] == fast, "the fast path may not set W without MMU-writable"
    assert vm.stats["emulated_writes"] == 1 and vm.host.contents(1) == 2
    assert not S.is_writable(vm.mmu.sptep(1).peek())
    guest_read(v, 0)
    guest_write(v, 0, 3)  # near miss: the other gfn is not tracked and stays fast
    assert v.stats["fast_pf"] == fast + 1
    vm.check()
    assert lockdep.reports() == []


@pytest.mark.parametrize("broken", [False, True])
def test_a_tracked_gfns_rebuilt_spte_keeps_dirty_so_swap_out_writes_the_page_back(broken):
    # the guest writes gfn 1 through its SPTE (D set there only), gfn 1 becomes shadowed, and
    # the next write's fault rebuilds the SPTE without W: D must stay, or the swap-out (here
    # before the emulated write, as the fault could be preempted) drops the first write
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, hazards={"tdp_fault_drops_ad": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    v = vm.vcpus[0]
    guest_write(v, 1, 1)
    shadow_guest_table(v, 1)
    assert vm.mmu.sptep(1).peek() & S.DIRTY
    assert page_fault(v, 1, True) == "emulate"
    assert bool(vm.mmu.sptep(1).peek() & S.DIRTY) is not broken
    vm.host.swap_out(1)
    assert vm.host.read(1) == (0 if broken else 1)


def test_an_emulated_write_marks_the_host_page_dirty():
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    v = vm.vcpus[0]
    shadow_guest_table(v, 1)
    guest_write(v, 1, 4)  # no SPTE of gfn 1 is writable or Dirty: KVM writes it itself
    assert vm.stats["emulated_writes"] == 1 and not vm.mmu.sptep(1).peek() & S.DIRTY
    vm.host.swap_out(1)
    assert vm.host.read(1) == 4, "the write through the host mapping reached the swap copy"


def test_shadow_paging_write_protects_every_guest_page_mapping_the_gfn_through_the_rmap():
    vm = VM(nr_vcpus=1, nr_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v = vm.vcpus[0]
    set_gpte(vm, 0, 2)
    set_gpte(vm, 1, 2)  # two guest pages, one gfn
    set_gpte(vm, 3, 3)
    for va in (0, 1, 3):
        guest_write(v, va, 5)
    with vm.srcu.read():
        account_shadowed(vm, 2)
    for va in (0, 1):
        assert not vm.mmu.sptep(va).peek() & (S.W | S.MMU_WRITABLE), va
    assert S.is_writable(vm.mmu.sptep(3).peek()), "a gfn not shadowed keeps W"
    guest_write(v, 1, 8)
    assert vm.stats["emulated_writes"] == 1 and guest_read(v, 0) == 8
    vm.check()


def test_the_invariants_see_a_bypassed_write_protection():
    # broken: no flush, so vcpu0 keeps its writable translation and writes the shadowed table
    with applied("shadowed_wrprot_no_flush"):
        vm, v = logged_vm()
    guest_write(v, 1, 1)
    shadow_guest_table(vm.vcpus[1], 1)
    with pytest.raises(AssertionError, match="gfn 1 holds a shadowed guest page table"):
        guest_write(v, 1, 2)
    # broken: only W cleared; the end-of-run check sees the MMU-writable SPTE
    with applied("shadowed_wrprot_keeps_mmu_writable"):
        vm, v = logged_vm()
    guest_read(v, 1)
    shadow_guest_table(vm.vcpus[1], 1)
    with pytest.raises(AssertionError, match="MMU-writable, but gfn 1 holds a shadowed"):
        vm.check()


def test_write_protect_without_mmu_lock_is_a_real_race_not_only_a_lockdep_report():
    sc = SCENARIOS["shadow.wrprot.correct"]
    quiet = dataclasses.replace(sc, options={**sc.options, "lockdep": False})
    assert verify.run_scenario(quiet).met, "correct model, lockdep off: still clean"
    with applied("shadowed_wrprot_without_mmu_lock"):
        out = verify.run_scenario(quiet)
    assert out.failure is not None
    assert "holds a shadowed guest page table" in str(out.failure.message)


def test_first_root_flag_before_rmaps_is_caught_only_by_the_race():
    # sequentially the early flag does no harm: only another vCPU seeing it in between does
    with applied("root_flag_before_rmaps"):
        vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    set_gpte(vm, 0, 0)
    guest_read(vm.vcpus[1], 0)
    vm.check()
    with applied("root_flag_before_rmaps"):
        out = verify.run_scenario(SCENARIOS["shadow.first_root.correct"])
    assert out.failure is not None and "has no rmaps" in str(out.failure.message)


def test_a_slot_moved_after_the_first_root_gets_its_rmaps_and_is_mapped_through_them():
    # a moved slot is new metadata indexed by its new gfns, allocated like a created one
    vm = VM(nr_vcpus=1, nr_pages=16, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    vm.set_memory_region(1, base_gfn=4, npages=4, hva=4)
    set_gpte(vm, 0, 1)
    guest_write(vm.vcpus[0], 0, 7)  # the first shadow root allocates every slot's rmaps
    assert vm.set_memory_region(1, base_gfn=8, npages=4, hva=4) == "move"
    vm.check()
    set_gpte(vm, 2, 9)
    guest_write(vm.vcpus[0], 2, 5)
    vm.check()
    assert vm.host.contents(4 + 1) == 5


def test_a_slot_moved_before_any_shadow_root_stays_without_rmaps():
    # the near miss: the TDP MMU and a VM with no shadow root yet need no rmaps
    vm = VM(nr_vcpus=1, nr_pages=16, tdp=False)
    vm.set_memory_region(1, base_gfn=4, npages=4, hva=4)
    vm.set_memory_region(1, base_gfn=8, npages=4, hva=4)
    assert not vm.memslots.access_pointer().by_id(1).arch.has_rmaps()
    vm.check()
# ------------------------------------------------------------------ the count lives in the slot


def _two_slots():
    vm = VM(nr_vcpus=1, nr_pages=3, host_pages=3)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.set_memory_region(1, base_gfn=1, npages=1, hva=1)
    return vm, vm.vcpus[0]


def test_the_write_track_count_lives_in_the_slot_and_goes_with_a_delete_or_move():
    vm, v = _two_slots()
    assert shadow_guest_table(v, 1)
    slot = vm.memslots.access_pointer().lookup(1)
    assert slot.arch.peek_write_track(1) == 1
    # near miss: a flags-only change keeps the arch part, so the gfn stays tracked
    vm.set_memory_region(1, base_gfn=1, npages=1, hva=1, flags=LOG_DIRTY_PAGES)
    kept = vm.memslots.access_pointer().lookup(1)
    assert kept.arch is slot.arch and not slot.arch.freed
    assert page_fault(v, 1, True) == "emulate", "a tracked gfn is never mapped writable"
    # a move frees it once the grace period is over: a late user is a use-after-free
    vm.set_memory_region(1, base_gfn=2, npages=1, hva=1)
    assert slot.arch.freed and vm.memslots.access_pointer().lookup(2).arch.peek_write_track(2) == 0
    with pytest.raises(AssertionError, match="memslot arch data .* used after it was freed"):
        slot.arch.write_track(1)
    # shadowing a gfn no memslot backs any more shadows nothing
    assert not shadow_guest_table(v, 1)
    vm.check()
    assert lockdep.reports() == []


@pytest.mark.parametrize("change", ["delete", "move"])
def test_shadowing_without_kvm_run_s_read_side_uses_freed_memslots(change):
    from kvmlock import explore
    from kvmlock.scenarios.memslots import shadowed_table_vs_update

    def body():
        shadowed_table_vs_update(change)

    ok = explore.check(body, max_runs=2000)
    assert ok.ok and ok.exhausted, ok.headline()
    with applied("shadow_table_without_srcu"):
        seen = explore.check(body, max_runs=2000)
        bad = explore.check(body, max_runs=2000, lockdep=False)
    assert seen.failure is not None and seen.failure.kind == "lockdep", seen.headline()
    assert "suspicious RCU usage" in seen.failure.message
    assert bad.failure is not None and bad.failure.kind == "assertion", bad.headline()
    assert "memslots array used after it was freed" in bad.failure.message


def _caught_by(scenario: str, mutant: str) -> str:
    """The scenario passes on the correct model and fails with ``mutant``: its message."""
    sc = SCENARIOS[scenario]
    assert verify.run_scenario(sc).met
    with applied(mutant):
        out = verify.run_scenario(sc)
    assert out.failure is not None
    return str(out.failure.message)


def test_an_emulated_write_whose_slot_went_away_is_mmio_and_logs_inside_srcu():
    vm, v0 = logged_vm()
    shadow_guest_table(vm.vcpus[1], 1)
    guest_write(v0, 1, 5)  # emulated and logged
    assert vm.stats["emulated_writes"] == 1 and vm.host.contents(1) == 5
    assert emulate_write(v0, 1, 6) and vm.host.contents(1) == 6
    vm.set_memory_region(0, npages=0)
    assert emulate_write(v0, 1, 7) is False, "no memslot: the write is MMIO, not an error"
    with pytest.raises(GuestFault, match="not backed by memory"):
        guest_write(v0, 1, 7)
    # logging after the read side ends uses a bitmap a deletion may have freed
    msg = _caught_by("shadow.emulated_write_vs_delete.correct", "emulated_write_logged_after_srcu")
    assert "dirty bitmap used after it was freed" in msg


def test_a_second_shadower_owes_no_flush_so_the_first_flushes_under_mmu_lock():
    vm = VM(nr_vcpus=3, nr_pages=4, host_pages=4)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    v0, v1, v2 = vm.vcpus
    guest_write(v0, 2, 1)
    flushes = vm.stats["tlb_flushes"]
    assert shadow_guest_table(v1, 2) and vm.stats["tlb_flushes"] == flushes + 1
    assert shadow_guest_table(v2, 2) and vm.stats["tlb_flushes"] == flushes + 1, (
        "near miss: the SPTE is read-only already, so the second shadower flushes nothing")
    guest_write(v0, 2, 5)  # emulated: the stale writable translation is gone
    assert vm.host.contents(2) == 5 and vm.stats["emulated_writes"] == 1
    msg = _caught_by("shadow.wrprot_two_shadowers.correct", "shadowed_wrprot_flush_after_unlock")
    assert "through a writable translation" in msg


def flooded_vm(**kw):
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    shadow_guest_table(vm.vcpus[1], 1)
    return vm, vm.vcpus[0]


def test_write_flooding_zaps_the_tables_shadow_page_after_three_emulated_writes():
    vm, v = flooded_vm()
    sp = vm.mmu.shadowed[1]
    for n in range(1, WRITE_FLOODING_LIMIT):
        guest_write(v, 1, n)
    assert vm.mmu.shadowed[1] is sp and vm.stats["mmu_flooded"] == 0
    flushes = vm.stats["tlb_flushes"]
    guest_write(v, 1, 9)
    assert vm.stats["emulated_writes"] == WRITE_FLOODING_LIMIT
    assert vm.stats["mmu_flooded"] == 1 and 1 not in vm.mmu.shadowed
    assert sp.removed and sp.freed, "prepared, then committed"
    assert vm.stats["tlb_flushes"] == flushes + 1, "the commit flushes before it frees"
    assert vm.host.contents(1) == 9
    guest_write(v, 1, 10)  # still tracked (the model never untracks): emulated, no page
    assert vm.stats["mmu_flooded"] == 1
    shadow_guest_table(vm.vcpus[1], 1)  # a fault shadows the table again: a new page
    assert vm.mmu.shadowed[1] is not sp and not vm.mmu.shadowed[1].freed
    vm.check()
    assert lockdep.reports() == []


def test_a_fault_using_the_page_resets_the_flooding_count():
    # near miss: as many writes, but the table is used in between, so it is no flood
    vm, v = flooded_vm()
    sp = vm.mmu.shadowed[1]
    for n in range(2 * WRITE_FLOODING_LIMIT):
        guest_write(v, 1, n)
        if n % 2:
            shadow_guest_table(vm.vcpus[1], 1)
    assert vm.mmu.shadowed[1] is sp and vm.stats["mmu_flooded"] == 0 and not sp.freed
    vm.check()


def test_a_zapped_table_page_still_reachable_is_reported():
    vm, v = flooded_vm()
    vm.mmu.shadowed[1].mark_removed("test")
    with pytest.raises(AssertionError, match="removed or freed shadow pages still reachable"):
        vm.check()


def test_two_flooding_writes_without_mmu_lock_zap_the_page_twice():
    # the consequence, with lockdep off too: both writes find the page flooded and remove it
    assert "removed twice" in _caught_by("shadow.write_flooding.correct",
                                         "track_write_without_mmu_lock")
    sc = SCENARIOS["shadow.write_flooding.correct"]
    quiet = dataclasses.replace(sc, options={**sc.options, "lockdep": False})
    with applied("track_write_without_mmu_lock"):
        out = verify.run_scenario(quiet)
    assert out.failure is not None and "removed twice" in str(out.failure.message)


def test_a_nested_walk_caches_the_upper_level_page_and_a_flush_drops_it():
    vm, v = flooded_vm()
    v1 = vm.vcpus[1]
    sp = vm.mmu.shadowed[1]
    nested_guest_walk(v1, 1)
    assert v1.walk_cache == {1: sp}
    for n in range(WRITE_FLOODING_LIMIT):
        guest_write(v, 1, n)
    assert sp.freed and not v1.walk_cache, "the commit's flush emptied the cache first"
    nested_guest_walk(v1, 1)  # the entry above names no page: fault, shadow again, walk
    assert vm.mmu.shadowed[1] is not sp and v1.walk_cache == {1: vm.mmu.shadowed[1]}
    vm.check()


def test_a_flooded_page_freed_without_the_flush_is_walked_after_the_free():
    msg = _caught_by("shadow.flooding_vs_nested_walk.correct", "flooded_page_freed_without_flush")
    assert "nested page walk used shadow page 1 after it was zapped and freed" in msg


def test_a_flooded_page_nobody_cached_may_go_without_a_walk_failing():
    # near miss: the mutant frees at once, but no vCPU ever walked through the page, so no
    # walk can reach it; the next walk finds the entry above empty and shadows the table again
    with applied("flooded_page_freed_without_flush"):
        vm, v = flooded_vm()
        sp = vm.mmu.shadowed[1]
        for n in range(WRITE_FLOODING_LIMIT):
            guest_write(v, 1, n)
        assert sp.freed
        nested_guest_walk(vm.vcpus[1], 1)
    assert vm.mmu.shadowed[1] is not sp
    vm.check()
