"""Access tracking: how the host learns which guest pages are in use.

The host ages a page through the MMU notifier's ``clear_flush_young``. With A/D bits the SPTE's
Accessed bit is simply cleared. Without them (``ad_disabled``) the SPTE is hidden from the CPU
-- its R/W/X bits cleared, R and X saved in high bits -- so the next access faults and the fast
page fault restores it. W is not saved: it comes back only on a write, so a write after aging
is seen. Because an A/D-disabled SPTE that is writable counts as dirty, aging must pass that
dirty state to the page before taking W away, or a later swap-out would throw the data away.
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
AGE_CLEAR_NONATOMIC = mutant(
    "age_clear_nonatomic", removes="the atomic clear of Accessed (load, then store)",
    breaks="the CPU sets Dirty in the SPTE without mmu_lock: clearing Accessed must keep it")


def _age_spte(vm: VM, sptep) -> bool:
    cur = sptep.load()
    if not S.is_present(cur) or not S.is_accessed(cur):
        return False
    if S.ad_enabled(cur):
        if AGE_CLEAR_NONATOMIC in vm.hazards:
            sptep.store(sptep.load() & ~S.ACCESSED)
        else:
            sptep.fetch_and(~S.ACCESSED & (2**64 - 1))
    else:
        # judge dirtiness on the value really replaced: the fast path may set W meanwhile
        if AGE_PLAIN_STORE in vm.hazards:
            sptep.store(S.mark_for_access_track(cur))
            old = cur
        else:
            old = spte_update_no_track(vm, sptep, S.mark_for_access_track(cur))
        if S.is_writable(old) and ACCESS_TRACK_DROPS_DIRTY not in vm.hazards:
            vm.host.set_page_dirty(S.pfn_of(old))
    return True


def age_gfn_range(vm: VM, start: int, end: int) -> bool:
    """``kvm_age_gfn``: age every SPTE of the gfns; True if any had been accessed.

    The caller holds ``mmu_lock`` and flushes TLBs if this returns True.
    """
    vm.mmu_lock.assert_held()
    young = False
    for gfn in range(start, end):
        for sp, i in vm.mmu.gfn_sptes(gfn):
            young |= _age_spte(vm, sp.sptes[i])
    return young
