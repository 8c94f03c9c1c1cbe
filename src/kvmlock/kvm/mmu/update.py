"""Changing a present SPTE while holding ``mmu_lock``: the rules the lockless agents force.

The fast page fault (setting W, restoring an access-tracked SPTE) and the CPU (setting Accessed
and Dirty) change SPTEs without ``mmu_lock``. So a holder of ``mmu_lock`` that replaces an SPTE
whose bits are *volatile* must use an atomic exchange, and must look at the value it actually
replaced -- not an earlier read -- to pass Accessed/Dirty on to the host page and to decide
whether TLBs need a flush (facts from arch/x86/kvm/mmu/mmu.c, in our own code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mutants import mutant
from kvmlock.sync import Atomic64

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM

__all__ = ["propagate_ad", "spte_clear_track_bits", "spte_set", "spte_update",
           "spte_update_no_track"]


NONATOMIC_VOLATILE_CLEAR = mutant(
    "nonatomic_volatile_clear", removes="xchg for a read-only SPTE the fast path may make "
    "writable (the rule from before the fast page fault)",
    breaks="fast page fault, Dirty bit tracking: a volatile SPTE is replaced atomically")
ACCESS_TRACK_NOT_VOLATILE = mutant(
    "access_track_not_volatile", removes="counting an access-tracked SPTE as volatile",
    breaks="the fast path restores an access-tracked SPTE locklessly, so it is replaced "
           "atomically")
SKIP_TLB_FLUSH_ON_WRPROT = mutant(
    "skip_tlb_flush_on_wrprot", removes="the TLB flush when W leaves an MMU-writable SPTE",
    breaks="fast page fault, TLB flush: write-protection is complete only after a flush")
FLUSH_JUDGED_ON_W = mutant(
    "flush_judged_on_w", removes="the flush decision of an SPTE update taken from W instead "
    "of MMU-writable (the SPTE's W may already be gone, its flush still owed by someone else)",
    breaks="TLB flush: a write-protect that finds W clear but MMU-writable set must flush, "
           "since the path that cleared W without mmu_lock for write may not have flushed yet")
WRPROT_DROPS_DIRTY = mutant(
    "wrprot_drops_dirty", removes="marking the page dirty when an update clears its SPTE's "
    "dirty state (W of an A/D-disabled SPTE)",
    breaks="Dirty reaches the page before the SPTE stops saying so (kvm_set_pfn_dirty)")
DIRTY_CLEAR_NO_FLUSH = mutant(
    "dirty_clear_no_flush", removes="the TLB flush when an update clears an SPTE's Dirty bit",
    breaks="dirty logging by Dirty bits (PML): a CPU whose TLB caches the translation with "
           "Dirty writes without setting Dirty again, so the write is never logged")
CLEAN_SPTE_PLAIN_STORE = mutant(
    "clean_spte_plain_store", removes="xchg for a writable SPTE whose Dirty bit is clear "
    "(replaced with a plain store, as if the CPU could not set Dirty meanwhile)",
    breaks="a volatile SPTE is replaced atomically: a Dirty bit the CPU sets while mmu_lock is "
           "held is passed on, not overwritten")
VOLATILE_JUDGED_ON_NEW = mutant(
    "volatile_judged_on_new", removes="the volatility test of an SPTE update made on the "
    "value being written instead of the one being replaced (an update to a value no "
    "lockless agent may change is a plain store, whatever it replaces)",
    breaks="a volatile SPTE is replaced atomically: whether a lockless agent may change it "
           "meanwhile is a property of the SPTE as it is, not of what replaces it")
NO_AD_PROPAGATION = mutant(
    "no_ad_propagation", removes="passing Accessed/Dirty to the page when an SPTE is dropped",
    breaks="Accessed and Dirty reach the page (kvm_set_pfn_accessed/dirty) before the SPTE goes")


def _volatile(vm: VM, value: int) -> bool:
    if ACCESS_TRACK_NOT_VOLATILE in vm.hazards and S.is_access_track(value):
        return False
    if CLEAN_SPTE_PLAIN_STORE in vm.hazards and S.ad_enabled(value) and S.is_writable(value):
        value |= S.DIRTY  # broken: judged as if Dirty were already set
    return S.has_volatile_bits(value, old_rule=NONATOMIC_VOLATILE_CLEAR in vm.hazards)


def spte_set(sptep: Atomic64, new: int) -> None:
    """Install an SPTE where none was present (nobody else can be changing it)."""
    sptep.store(new)


def spte_update_no_track(vm: VM, sptep: Atomic64, new: int) -> int:
    """Replace the SPTE; returns the value really replaced.

    The callers hold ``mmu_lock`` for write, so no read-mode writer is between its freeze of
    this SPTE and its next write of it (the kernel WARNs on a frozen SPTE here): finding one
    means a read-mode writer ran under us.
    """
    old = sptep.load()
    assert old != S.FROZEN, (
        f"{sptep.name} is frozen under a writer that relies on mmu_lock held for write: a "
        "read-mode writer (one that freezes SPTEs) is changing it at the same time")
    judged = new if VOLATILE_JUDGED_ON_NEW in vm.hazards else old
    if not S.is_present(old) or not _volatile(vm, judged):
        sptep.store(new)
        return old
    return sptep.xchg(new)


def spte_update(vm: VM, sptep: Atomic64, new: int) -> bool:
    """``mmu_spte_update``: replace a present SPTE; True when TLBs must be flushed.

    A flush is needed when the W bit goes away from an SPTE that was MMU-writable (the fast
    path may have made it writable, and a CPU may have cached that), and when Dirty is cleared
    (a CPU would not set it again through a cached translation, and dirty logging by Dirty
    bits needs it set again). Clearing Accessed asks for no flush: access tracking tolerates a
    page that looks old while a CPU still caches its translation (the kernel's
    ``leaf_spte_change_needs_tlb_flush`` says so, and x86 KVM elides the flush of
    ``clear_flush_young`` for the same reason); Accessed still reaches the page here.
    """
    old = spte_update_no_track(vm, sptep, new)
    if not S.is_present(old):
        return False
    flush = False
    was = S.is_writable(old) if FLUSH_JUDGED_ON_W in vm.hazards else S.is_mmu_writable(old)
    if was and not S.is_writable(new) and SKIP_TLB_FLUSH_ON_WRPROT not in vm.hazards:
        flush = True
    pfn = S.pfn_of(old)
    if S.is_accessed(old) and not S.is_accessed(new):
        vm.host.set_page_accessed(pfn)
    if S.is_dirty(old) and not S.is_dirty(new):
        flush = flush or DIRTY_CLEAR_NO_FLUSH not in vm.hazards
        if WRPROT_DROPS_DIRTY not in vm.hazards:
            vm.host.set_page_dirty(pfn)
    return flush


def spte_clear_track_bits(vm: VM, sptep: Atomic64) -> int:
    """``mmu_spte_clear_track_bits``: drop the SPTE, passing Accessed/Dirty to the page.

    Returns the value dropped. The caller flushes TLBs before the page may be reused.
    """
    old = spte_update_no_track(vm, sptep, 0)
    propagate_ad(vm, old)
    return old


def propagate_ad(vm: VM, old: int) -> None:
    """An SPTE that held ``old`` is gone: its Accessed and Dirty bits reach the page
    (``kvm_set_pfn_accessed/dirty``), the only record left of the accesses made through it."""
    if not S.is_present(old) or NO_AD_PROPAGATION in vm.hazards:
        return
    pfn = S.pfn_of(old)
    if S.is_accessed(old):
        vm.host.set_page_accessed(pfn)
    if S.is_dirty(old):
        vm.host.set_page_dirty(pfn)
