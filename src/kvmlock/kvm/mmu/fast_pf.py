"""The fast page fault: fix an SPTE with one cmpxchg, without taking ``mmu_lock``.

Two kinds of fault are fixed this way (facts from arch/x86/kvm/mmu/mmu.c, own code):

* a write to an SPTE that is read-only only because KVM write-protected it for dirty logging
  (W clear, MMU-writable and Host-writable set): set W and log the gfn as dirty;
* an access to an SPTE hidden for access tracking: restore the saved R/X bits (and W too, but
  only if the access is a write and the SPTE is MMU-writable).

The cmpxchg only proves the SPTE's *bits* did not change since they were read, not that the
SPTE still stands for the same gfn. For a direct shadow page the gfn of an entry never changes,
so that is enough. For an indirect one the guest may have re-pointed the entry at another gfn
whose frame happens to be the same recycled pfn (the gfn->pfn ABA problem) -- the fix would then
log the old gfn and the write to the new one would be lost. Hence: direct pages only, unless
the ``fast_pf_indirect`` hazard re-enables the bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslots
    from kvmlock.kvm.vcpu import VCPU

__all__ = ["FIXED", "GO_SLOW", "SPURIOUS", "fast_page_fault"]

FIXED = "fixed"
SPURIOUS = "spurious"
GO_SLOW = "slow"
MAX_RETRIES = 4

FAST_PF_INDIRECT = mutant(
    "fast_pf_indirect", removes="the fast path's restriction to direct shadow pages",
    breaks="fast page fault: gfn->pfn ABA on indirect pages loses a dirty gfn")
FAST_PF_PLAIN_STORE = mutant(
    "fast_pf_plain_store", removes="the fast path's cmpxchg (load, compare, then store)",
    breaks="fast page fault: the SPTE is fixed with cmpxchg, so a zap in between wins")
FAST_PF_IGNORE_MMU_WRITABLE = mutant(
    "fast_pf_ignore_mmu_writable", removes="the fast path's MMU-writable test before setting W",
    breaks="fast page fault: only an SPTE with Host-writable and MMU-writable set may be made "
           "writable locklessly")
LOCKLESS_WALK_UNPROTECTED = mutant(
    "lockless_walk_unprotected",
    removes="the lockless walk's RCU read side (kvm_tdp_mmu_walk_lockless_begin/end)",
    breaks="a shadow page is freed only after every lockless walker that may use it is done")
SHADOW_LOCKLESS_WALK_UNPROTECTED = mutant(
    "shadow_lockless_walk_unprotected", removes="the shadow MMU's lockless-walk protection "
    "(walk_shadow_page_lockless_begin/end: interrupts off, vcpu->mode set to "
    "READING_SHADOW_PAGE_TABLES) around the fast page fault",
    breaks="a shadow page is freed only after a remote flush that waits for every vCPU in a "
           "lockless walk: one the flush does not wait for reads the freed page")
LOCKLESS_WALK_ONE_FLAG = mutant(
    "lockless_walk_one_flag", removes="the per-vCPU record of a lockless walk (every vCPU "
    "records its walk in one VM-wide flag, the first vCPU's)",
    breaks="the grace period waits for every vCPU's walk: one walker ending must not hide "
           "another still in progress")
FAST_PF_NO_MARK_DIRTY = mutant(
    "fast_pf_no_mark_dirty", removes="the fast path's mark_page_dirty after setting W",
    breaks="dirty logging: the first write after write-protection is logged")
FAST_PF_RESTORE_NO_MARK_DIRTY = mutant(
    "fast_pf_restore_no_mark_dirty", removes="the fast path's mark_page_dirty when the same "
    "fix restores an access-tracked SPTE and sets W (only a plain write-protected SPTE's fix "
    "is logged)",
    breaks="dirty logging: the first write after write-protection is logged, even if the SPTE "
           "was aged in between (any fix that makes an SPTE writable logs its gfn)")
FAST_PF_MARKS_DIRTY_FIRST = mutant(
    "fast_pf_marks_dirty_first", removes="the order of the fast path's fix and its "
    "mark_page_dirty (the gfn logged before the cmpxchg that makes the SPTE writable)",
    breaks="dirty logging: a gfn is logged after its SPTE became writable, or a harvest in "
           "between takes the bit, finds the SPTE read-only and protects nothing, and the "
           "writes through the SPTE the cmpxchg then opens are never logged")


def fast_page_fault(vcpu: VCPU, va: int, write: bool, slots: Memslots) -> str:
    """Try to fix the fault on ``va`` locklessly; ``GO_SLOW`` hands it to the slow path."""
    # The TDP MMU frees its pages after an RCU grace period, and its lockless walk is an RCU
    # read side. The shadow MMU (its direct pages, with the TDP MMU off) frees them after a
    # remote flush, which waits for a vCPU whose mode says it is walking. (The fast path on
    # indirect pages is itself a mutant, and runs with neither.)
    mmu, hazards = vcpu.vm.mmu, vcpu.vm.hazards
    if not mmu.tdp:
        return _fast_page_fault(vcpu, va, write, slots)
    if not mmu.tdp_mmu:
        if SHADOW_LOCKLESS_WALK_UNPROTECTED in hazards:
            return _fast_page_fault(vcpu, va, write, slots)
        with vcpu.shadow_lockless_walk():
            return _fast_page_fault(vcpu, va, write, slots)
    if LOCKLESS_WALK_UNPROTECTED in hazards:
        return _fast_page_fault(vcpu, va, write, slots)
    # broken: one flag for the VM, so the first walker to finish clears it for all
    walker = vcpu.vm.vcpus[0] if LOCKLESS_WALK_ONE_FLAG in vcpu.vm.hazards else vcpu
    with walker.lockless_walk():
        return _fast_page_fault(vcpu, va, write, slots)


def _fast_page_fault(vcpu: VCPU, va: int, write: bool, slots: Memslots) -> str:
    vm = vcpu.vm
    loc = vm.mmu.walk(va, vcpu.root)
    if loc is None:
        return GO_SLOW
    sp, i = loc
    if not sp.direct and FAST_PF_INDIRECT not in vm.hazards:
        return GO_SLOW
    sptep = sp.sptes[i]
    for _ in range(MAX_RETRIES):
        old = sptep.load()
        # the model's KASAN, checked with the load: the page must not have been freed under us
        assert not sp.freed, (
            f"{vcpu!r}'s fast page fault read an SPTE of shadow page {sp.index} after it was "
            "freed: the lockless walk outlived the page")
        if not S.is_present(old):
            return GO_SLOW
        if S.hw_allows(old, write):
            return SPURIOUS  # someone else fixed it meanwhile
        new = old
        if S.is_access_track(new):
            new = S.restore_access_track(new)
        if write and (S.is_mmu_writable(new) or FAST_PF_IGNORE_MMU_WRITABLE in vm.hazards):
            new |= S.W
        if new == old or not S.hw_allows(new, write):
            return GO_SLOW
        gfn = sp.gfn_at(i)  # read before the cmpxchg: the ABA window for indirect pages
        first = FAST_PF_MARKS_DIRTY_FIRST in vm.hazards
        if first and S.is_writable(new) and not S.is_writable(old):
            _mark_dirty(slots, gfn, vm.hazards)  # broken: a harvest may take the bit now
        if FAST_PF_PLAIN_STORE in vm.hazards:
            if sptep.load() != old:
                continue
            sptep.store(new)
        elif sptep.cmpxchg(old, new) != old:
            continue
        # Audit (no visible step, so it is atomic with the cmpxchg under the explorer): the
        # gfn this fix is about must be the gfn the SPTE maps now. Never true for direct pages.
        mapped = sp.gfn_at(i)
        if mapped != gfn:
            vm.stats["fast_pf_wrong_gfn"] += 1
            vm.audit.append(f"fast page fault fixed the SPTE of guest page {va} for gfn {gfn}, "
                            f"but when the cmpxchg landed it mapped gfn {mapped}")
        restored = S.is_access_track(old) and FAST_PF_RESTORE_NO_MARK_DIRTY in vm.hazards
        if S.is_writable(new) and not S.is_writable(old) and not restored and \
                FAST_PF_NO_MARK_DIRTY not in vm.hazards and not first:
            _mark_dirty(slots, gfn, vm.hazards)
        return FIXED
    return GO_SLOW


def _mark_dirty(slots: Memslots, gfn: int, hazards: frozenset[str]) -> None:
    """``mark_page_dirty_in_slot`` in the memslot the fault looked up (inside kvm->srcu)."""
    slot = slots.lookup(gfn)
    if slot is not None:
        slot.mark_dirty(gfn, hazards)
