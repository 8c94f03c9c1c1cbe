"""The page fault handler: the fast path first, then the slow path under ``mmu_lock``.

The slow path finds the host page outside any spinlock (it may sleep to swap the page in), then
takes ``mmu_lock`` -- for read in the TDP MMU, which installs SPTEs with a cmpxchg, for write in
the shadow MMU -- and installs the SPTE -- unless an MMU-notifier invalidation ran or is still
running for that address since the fault began, in which case the pfn it found may already be
gone and the fault is retried (``mmu_invalidate_seq`` / ``mmu_invalidate_in_progress``).
The whole fault runs inside ``kvm->srcu``'s read side, which keeps the memslots array alive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.fast_pf import FIXED, SPURIOUS, fast_page_fault
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mmu.update import spte_set, spte_update

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslot, Memslots
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["FIXED", "GUEST_FAULT", "MMIO", "RETRY", "SPURIOUS", "page_fault"]

RETRY = "retry"
MMIO = "mmio"
GUEST_FAULT = "guest_fault"


def invalidate_retry(vm: VM, mmu_seq: int, hva: int) -> bool:
    """``mmu_invalidate_retry_hva``: must a fault that began at ``mmu_seq`` start over?"""
    vm.mmu_lock.assert_held()
    if vm.mmu_invalidate_in_progress and \
            vm.mmu_invalidate_range_start <= hva < vm.mmu_invalidate_range_end:
        return True
    return vm.mmu_invalidate_seq.load() != mmu_seq


def page_fault(vcpu: VCPU, va: int, write: bool) -> str:
    """Handle an EPT violation / shadow page fault on guest page ``va``."""
    vm = vcpu.vm
    vm.mmu.check_va(va)
    idx = vm.srcu.read_lock()
    try:
        slots: Memslots = vm.memslots.srcu_dereference(vm.srcu)
        if vm.mmu.tdp or vm.hazards.fast_pf_indirect:
            r = fast_page_fault(vcpu, va, write, slots)
            if r == FIXED:
                vcpu.stats["fast_pf"] += 1
                return r
            if r == SPURIOUS:
                vcpu.stats["spurious_pf"] += 1
                return r
        r = _slow_page_fault(vcpu, va, write, slots)
        vcpu.stats["retry_pf" if r == RETRY else "slow_pf"] += 1
        return r
    finally:
        vm.srcu.read_unlock(idx)


def _slow_page_fault(vcpu: VCPU, va: int, write: bool, slots: Memslots) -> str:
    vm = vcpu.vm
    mmu = vm.mmu
    gfn = mmu.guest_translate(va)
    if gfn is None:
        return GUEST_FAULT
    slot = slots.lookup(gfn)
    if slot is None or slot.invalid:
        return MMIO
    hva = slot.gfn_to_hva(gfn)
    mmu_seq = vm.mmu_invalidate_seq.load()
    pfn = vm.host.fault_in(hva)
    # with dirty logging on, only a write fault gets a writable SPTE: a read fault leaves the
    # page write-protected so that its first write is seen (by the fast path)
    writable = write or not slot.logging
    new = S.make(pfn, writable=writable, accessed=True, dirty=writable,
                 ad_disabled=mmu.ad_disabled)
    slots.live()  # the fault keeps using what it looked up (slot, its bitmap and arch data)
    if mmu.tdp:
        return _tdp_map(vm, va, gfn, slot, hva, mmu_seq, pfn, write, new)
    return _shadow_map(vm, va, gfn, slot, hva, mmu_seq, pfn, write, new)


def _tdp_map(vm: VM, va: int, gfn: int, slot: Memslot, hva: int, mmu_seq: int, pfn: int,
             write: bool, new: int) -> str:
    """The TDP MMU: ``mmu_lock`` for read, the SPTE installed with a cmpxchg.

    Faults on different (or the same) pages run in parallel; one that loses the cmpxchg to
    another fault, the fast path or the CPU simply retries, as RET_PF_RETRY does.
    """
    mmu = vm.mmu
    with vm.mmu_lock.read():
        if invalidate_retry(vm, mmu_seq, hva):
            return RETRY
        sp, i = mmu.ensure_page(va)
        sptep = sp.sptes[i]
        old = sptep.load()
        if S.is_present(old):
            if S.pfn_of(old) != pfn:
                return RETRY  # only an invalidation changes the pfn, and it zaps first
            if S.hw_allows(old, write):
                return FIXED  # fixed by someone else meanwhile
            new |= old & (S.ACCESSED | S.DIRTY)
        if sptep.cmpxchg(old, new) != old:
            return RETRY
        if S.is_writable(new):
            slot.mark_dirty(gfn)
    return FIXED


def _shadow_map(vm: VM, va: int, gfn: int, slot: Memslot, hva: int, mmu_seq: int, pfn: int,
                write: bool, new: int) -> str:
    """The shadow MMU: ``mmu_lock`` for write; the rmap and indirect pages change here."""
    mmu = vm.mmu
    mmu.load()
    loc = mmu.walk(va)
    assert loc is not None
    sp, i = loc
    sptep = sp.sptes[i]
    with vm.mmu_lock.write():
        if invalidate_retry(vm, mmu_seq, hva):
            return RETRY
        if mmu.guest_translate(va) != gfn:
            return RETRY  # the guest re-pointed its page table meanwhile
        old = sptep.load()
        flush = False
        if S.is_present(old):
            if S.pfn_of(old) != pfn or sp.gfn_at(i) != gfn:
                mmu.drop_spte(sp, i)
                flush = True
                spte_set(sptep, new)
            elif not S.hw_allows(old, write):
                flush = spte_update(vm, sptep, new | (old & (S.ACCESSED | S.DIRTY)))
        else:
            spte_set(sptep, new)
        assert slot.arch.has_rmaps(), (f"memslot {slot.id} has no rmaps: the rmap walk of a "
                                        "shadow root dereferences NULL")
        mmu.rmap_add(gfn, sp, i)
        if S.is_writable(new):
            slot.mark_dirty(gfn)
        if flush:
            flush_remote_tlbs(vm)
    return FIXED
