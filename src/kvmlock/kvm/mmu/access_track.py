"""Access tracking: how the host learns which guest pages are in use.

The host ages a page through the MMU notifier's ``clear_flush_young``. With A/D bits the SPTE's
Accessed bit is simply cleared, with no TLB flush (see :func:`age_gfn_range`). Without them
(``ad_disabled``) the SPTE is hidden from the CPU -- its R/W/X bits cleared, R and X saved in
high bits -- so the next access that walks it faults and the fast page fault restores it. W is
not saved: it comes back only on a write, so a write after aging is seen (and logged).
Because an A/D-disabled SPTE that is writable counts as dirty, aging must pass that dirty
state to the page before taking W away, or a later swap-out would throw the data away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.update import spte_update_no_track
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM

__all__ = ["age_gfn_range"]


ACCESS_TRACK_DROPS_DIRTY = mutant(
    "access_track_drops_dirty", removes="marking the page dirty when aging takes W away",
    breaks="an A/D-disabled writable SPTE is dirty: aging passes that on to the page")
AGE_PLAIN_STORE = mutant(
    "age_plain_store", removes="the atomic update when aging an A/D-disabled SPTE",
    breaks="aging replaces a volatile SPTE atomically and judges the value it replaced")
AGE_NO_FLUSH = mutant(
    "age_no_flush", removes="the TLB flush after aging took W from an A/D-disabled SPTE",
    breaks="dirty logging: a vCPU that still caches the writable translation writes without a "
           "fault, and the harvest, finding the SPTE already read-only, flushes nothing: the "
           "write never reaches the log")
AGE_CLEAR_NONATOMIC = mutant(
    "age_clear_nonatomic", removes="the atomic clear of Accessed (load, then store)",
    breaks="the CPU sets Dirty in the SPTE without mmu_lock: clearing Accessed must keep it")


def _age_spte(vm: VM, sptep) -> tuple[bool, bool]:
    """Age one SPTE: (was it accessed, did aging take W away)."""
    cur = sptep.load()
    if not S.is_present(cur) or not S.is_accessed(cur):
        return False, False
    if S.ad_enabled(cur):
        if AGE_CLEAR_NONATOMIC in vm.hazards:
            sptep.store(sptep.load() & ~S.ACCESSED)
        else:
            sptep.fetch_and(~S.ACCESSED & (2**64 - 1))
        return True, False
    # judge dirtiness on the value really replaced: the fast path may set W meanwhile
    if AGE_PLAIN_STORE in vm.hazards:
        sptep.store(S.mark_for_access_track(cur))
        old = cur
    else:
        old = spte_update_no_track(vm, sptep, S.mark_for_access_track(cur))
    took_w = S.is_writable(old)
    if took_w and ACCESS_TRACK_DROPS_DIRTY not in vm.hazards:
        vm.host.set_page_dirty(S.pfn_of(old))
    return True, took_w


def age_gfn_range(vm: VM, start: int, end: int) -> tuple[bool, bool]:
    """``kvm_age_gfn``: age every SPTE of the gfns. Returns (any had been accessed, TLBs
    must be flushed); the caller holds ``mmu_lock`` and flushes.

    Clearing Accessed needs no flush: a CPU that keeps a cached translation only makes the
    page look old while it is in use, which access tracking tolerates (reclaim itself goes
    through invalidate_range_start, which zaps and flushes). Taking W from an A/D-disabled
    SPTE does: the SPTE stays MMU-writable, so a later write-protection for dirty logging
    finds nothing writable to clear and asks for no flush, while a CPU that cached the
    writable translation goes on writing without a fault, unlogged. (x86 KVM places that
    flush elsewhere -- it elides the aging flush entirely and instead flushes every harvest
    that reaped a dirty bit; the model keeps the flush with the aging that needs it.)
    """
    vm.mmu_lock.assert_held()
    young = flush = False
    for gfn in range(start, end):
        for sp, i in vm.mmu.gfn_sptes(gfn):
            y, took_w = _age_spte(vm, sp.sptes[i])
            young |= y
            flush |= took_w and AGE_NO_FLUSH not in vm.hazards
    return young, flush
