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
from kvmlock.sync import Atomic64

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM

__all__ = ["spte_clear_track_bits", "spte_set", "spte_update", "spte_update_no_track"]


def _volatile(vm: VM, value: int) -> bool:
    return S.has_volatile_bits(value, old_rule=vm.hazards.nonatomic_volatile_clear)


def spte_set(sptep: Atomic64, new: int) -> None:
    """Install an SPTE where none was present (nobody else can be changing it)."""
    sptep.store(new)


def spte_update_no_track(vm: VM, sptep: Atomic64, new: int) -> int:
    """Replace the SPTE; returns the value really replaced."""
    old = sptep.load()
    if not S.is_present(old) or not _volatile(vm, old):
        sptep.store(new)
        return old
    return sptep.xchg(new)


def spte_update(vm: VM, sptep: Atomic64, new: int) -> bool:
    """``mmu_spte_update``: replace a present SPTE; True when TLBs must be flushed.

    A flush is needed when the W bit goes away from an SPTE that was MMU-writable (the fast
    path may have made it writable, and a CPU may have cached that), and when Accessed or Dirty
    is cleared (a CPU would not set it again through a cached translation).
    """
    old = spte_update_no_track(vm, sptep, new)
    if not S.is_present(old):
        return False
    flush = False
    if S.is_mmu_writable(old) and not S.is_writable(new) and \
            not vm.hazards.skip_tlb_flush_on_wrprot:
        flush = True
    pfn = S.pfn_of(old)
    if S.is_accessed(old) and not S.is_accessed(new):
        flush = True
        vm.host.set_page_accessed(pfn)
    if S.is_dirty(old) and not S.is_dirty(new):
        flush = True
        vm.host.set_page_dirty(pfn)
    return flush


def spte_clear_track_bits(vm: VM, sptep: Atomic64) -> int:
    """``mmu_spte_clear_track_bits``: drop the SPTE, passing Accessed/Dirty to the page.

    Returns the value dropped. The caller flushes TLBs before the page may be reused.
    """
    old = spte_update_no_track(vm, sptep, 0)
    if not S.is_present(old):
        return old
    pfn = S.pfn_of(old)
    if S.is_accessed(old):
        vm.host.set_page_accessed(pfn)
    if S.is_dirty(old):
        vm.host.set_page_dirty(pfn)
    return old
