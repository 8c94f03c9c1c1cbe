"""The resync of unsync shadow pages at a CR3 load: what each of its steps does, and that
removing one is seen as a consequence (stale translation, freed frame, lost rmap entry)."""

import dataclasses

import pytest

from kvmlock import lockdep
from kvmlock.kvm.guest import (
    GuestFault,
    guest_read,
    guest_write,
    load_cr3,
    set_gpte,
    write_gpte,
)
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mutants import applied
from kvmlock.kvm.vm import VM
from kvmlock.scenarios import verify
from kvmlock.scenarios.registry import SCENARIOS


def shadow_vm(**kw):
    vm = VM(nr_vcpus=2, nr_pages=4, host_pages=4, tdp=False, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=4, hva=0)
    return vm, vm.vcpus


def test_load_cr3_syncs_drops_stale_sptes_and_write_protects_the_table():
    vm, (v0, v1) = shadow_vm()
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 11)
    guest_write(v0, 1, 22)
    write_gpte(v0, 0, 2)  # exits once: unsync, table writable; the SPTE still maps gfn 1
    sp = vm.mmu.pages[0]
    assert sp.unsync and sp.gpt_writable and vm.mmu.unsync_count == 1
    assert guest_read(v0, 0) == 11, "until the guest flushes, the old translation may be used"
    flushes = vm.stats["tlb_flushes"]
    load_cr3(v0)
    assert not sp.unsync and not sp.gpt_writable and vm.mmu.unsync_count == 0
    assert not S.is_present(vm.mmu.sptep(0).peek()), "the stale SPTE is dropped"
    assert S.is_present(vm.mmu.sptep(1).peek()), "near miss: a matching SPTE is kept"
    # one flush for the table's write-protection, one for the dropped SPTE
    assert vm.stats["tlb_flushes"] == flushes + 2 and vm.stats["mmu_syncs"] == 1
    assert 1 not in vm.mmu.rmap, "the dropped SPTE left gfn 1's rmap"
    assert guest_read(v0, 0) == 22
    vm.check()
    write_gpte(v0, 1, 3)  # the table is write-protected again: this store exits
    assert sp.unsync and sp.gpt_writable


def test_a_sync_with_nothing_stale_drops_nothing_and_flushes_only_for_the_table():
    vm, (v0, _) = shadow_vm()
    set_gpte(vm, 0, 1)
    guest_read(v0, 0)
    write_gpte(v0, 2, 3)  # another entry of the same table: page 0's SPTE stays right
    flushes = vm.stats["tlb_flushes"]
    load_cr3(v0)
    assert S.is_present(vm.mmu.sptep(0).peek()) and not vm.mmu.pages[0].unsync
    assert vm.stats["tlb_flushes"] == flushes + 1
    load_cr3(v0)  # nothing unsync: nothing to protect, drop or flush
    assert vm.stats["tlb_flushes"] == flushes + 1


def test_load_cr3_needs_shadow_paging():
    with pytest.raises(ValueError, match="uses TDP"):
        load_cr3(VM(nr_vcpus=1).vcpus[0])


@pytest.mark.parametrize("broken", [False, True])
def test_a_sync_that_keeps_the_table_writable_misses_the_next_change(broken):
    # sequentially, no race needed: the page is marked sync but the guest's next store to its
    # table does not exit, so the next CR3 load finds nothing to sync
    vm, (v0, _) = shadow_vm(hazards={"sync_keeps_table_writable": broken})
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 1, 22)
    write_gpte(v0, 0, 2)
    load_cr3(v0)
    assert guest_read(v0, 0) == 22
    write_gpte(v0, 0, 3)  # gfn 3 holds 0
    assert vm.mmu.pages[0].unsync != broken, "the store exits only if the table is protected"
    load_cr3(v0)
    got = guest_read(v0, 0)
    if not broken:
        assert got == 0
        vm.check()
        return
    assert got == 22, "the stale SPTE still maps gfn 2"
    with pytest.raises(AssertionError, match="marked in sync while the guest.s table is writable"):
        vm.check()


def test_sync_without_mmu_lock_is_a_real_race_not_only_a_lockdep_report():
    sc = SCENARIOS["shadow.sync_roots.correct"]
    quiet = dataclasses.replace(sc, options={**sc.options, "lockdep": False})
    assert verify.run_scenario(quiet).met, "correct model, lockdep off: still clean"
    with applied("sync_without_mmu_lock"):
        out = verify.run_scenario(quiet)
    assert out.failure is not None and out.failure.kind == "assertion", out.result
    msg = str(out.failure.message)
    assert "rmap" in msg or "freed" in msg, msg


@pytest.mark.parametrize("mutant", ["sync_wrprot_no_flush", "sync_reads_before_wrprot"])
def test_the_protect_flush_and_order_matter_only_for_a_store_racing_the_sync(mutant):
    # near miss: with the guest's store done before the CR3 load, neither the flush after the
    # table's write-protection nor the order of protecting and reading changes anything
    vm, (v0, v1) = shadow_vm(hazards={mutant})
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 11)
    guest_write(v0, 1, 22)
    write_gpte(v1, 3, 3)
    write_gpte(v1, 0, 2)
    load_cr3(v0)
    load_cr3(v1)
    assert guest_read(v1, 0) == 22
    vm.check()
    # the race the scenario explores is what catches them
    with applied(mutant):
        out = verify.run_scenario(SCENARIOS["shadow.sync_vs_store.correct"])
    assert out.failure is not None and "reads 11" in str(out.failure.message)


def test_an_rmap_entry_for_a_dropped_or_remapped_spte_is_reported():
    """The rmap's other half: each entry names a present SPTE of its gfn. A correct drop
    leaves none behind; an entry whose removal was lost (as two read-mode syncs lose one) or
    that names an SPTE now mapping another gfn is reported."""
    vm, (v0, v1) = shadow_vm()
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 1)
    guest_read(v0, 0)
    guest_read(v1, 1)
    sp = vm.mmu.pages[0]
    assert vm.mmu.rmap[1] == {(sp, 0), (sp, 1)}
    with vm.mmu_lock.write():
        vm.mmu.drop_spte(sp, 0)
    vm.check()  # near miss: dropped and removed
    vm.mmu.rmap[1] = vm.mmu.rmap[1] | {(sp, 0)}  # the removal lost
    with pytest.raises(AssertionError, match="which is not present"):
        vm.check()
    vm.mmu.rmap[1] = frozenset({(sp, 1)})
    vm.mmu.rmap[2] = frozenset({(sp, 1)})  # an entry under a gfn the SPTE does not map
    with pytest.raises(AssertionError, match="which maps gfn 1"):
        vm.check()


def test_a_cr3_load_with_no_page_unsync_skips_the_sync_without_mmu_lock():
    vm, (v0, v1) = shadow_vm()
    set_gpte(vm, 0, 1)
    load_cr3(v0)
    assert vm.stats["mmu_syncs"] == 0, "nothing unsync: the lockless look returns early"
    write_gpte(v0, 3, 3)
    load_cr3(v1)
    assert vm.stats["mmu_syncs"] == 1, "near miss: an unsync page is synced"
    # the early-out is why the fault marks the page unsync before the table is writable
    sc = SCENARIOS["shadow.unsync_vs_lockless_sync.correct"]
    assert verify.run_scenario(sc).met
    with applied("unsync_marked_after_table_writable"):
        out = verify.run_scenario(sc)
    assert out.failure is not None and "reads 11" in str(out.failure.message)


def test_the_sync_finds_the_dropped_sptes_rmap_through_the_memslots_inside_srcu():
    vm, (v0, v1) = shadow_vm()
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 11)
    write_gpte(v0, 0, 2)
    load_cr3(v0)  # drops page 0's SPTE: its rmap found through gfn 1's memslot
    assert lockdep.reports() == []
    vm, (v0, v1) = shadow_vm(hazards={"sync_without_srcu"})
    set_gpte(vm, 0, 1)
    guest_write(v0, 0, 11)
    write_gpte(v0, 0, 2)
    load_cr3(v0)
    assert [r.kind for r in lockdep.reports()] == ["suspicious_rcu"]


def test_a_sync_without_srcu_uses_a_freed_memslots_array_even_with_lockdep_off():
    from kvmlock import explore

    sc = SCENARIOS["shadow.sync_vs_slot_update.correct"]
    # near miss: inside the read side the update's grace period waits for the sync
    res = explore.check(sc.body, strategy="dpor", max_runs=2000, lockdep=False)
    assert res.failure is None and res.exhausted
    with applied("sync_without_srcu"):
        res = explore.check(sc.body, strategy="dpor", max_runs=2000, lockdep=False)
    f = res.failure
    assert f is not None and f.kind == "assertion", f
    assert "memslots array used after it was freed" in str(f.message)


@pytest.mark.parametrize("broken", [False, True])
def test_a_write_the_guest_revoked_in_an_unsync_page_is_gone_after_the_sync(broken):
    vm, (v0, _) = shadow_vm(hazards={"sync_keeps_revoked_write": broken})
    set_gpte(vm, 0, 1)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 7)  # page 0's SPTE writable
    guest_write(v0, 1, 8)  # near miss: page 1 stays writable in the guest, and its SPTE too
    write_gpte(v0, 0, 1, writable=False)  # same gfn, read-only; the page goes unsync
    load_cr3(v0)
    assert S.is_writable(vm.mmu.sptep(1).peek()), "a PTE still writable keeps its SPTE"
    if not broken:
        vm.check()
        assert not vm.mmu.sptep(0).peek() & (S.W | S.MMU_WRITABLE)
        with pytest.raises(GuestFault):
            guest_write(v0, 0, 5)
        return
    with pytest.raises(AssertionError, match="writable or MMU-writable, but the guest maps "
                                             "that page read-only"):
        vm.check()
    guest_write(v0, 0, 5)  # the consequence: the guest writes a page it maps read-only
    assert guest_read(v0, 0) == 5
