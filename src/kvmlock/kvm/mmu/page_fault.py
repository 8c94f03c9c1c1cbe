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
from kvmlock.kvm.mmu.fast_pf import FAST_PF_INDIRECT, FIXED, SPURIOUS, fast_page_fault
from kvmlock.kvm.mmu.page_track import tracked_spte
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mmu.update import spte_set, spte_update
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslot, Memslots
    from kvmlock.kvm.mmu.shadow import TdpRoot
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["EMULATE", "FIXED", "GUEST_FAULT", "MMIO", "RETRY", "SPURIOUS", "page_fault"]

RETRY = "retry"
#: the write hit a write-tracked gfn (a shadowed guest page table): KVM emulates it
EMULATE = "emulate"
MMIO = "mmio"
GUEST_FAULT = "guest_fault"

NO_INVALIDATE_RETRY = mutant(
    "no_invalidate_retry", removes="the slow path's mmu_invalidate_seq/in_progress retry check",
    breaks="a fault racing an MMU-notifier invalidation must retry, or it maps a freed page")
NO_IN_PROGRESS_CHECK = mutant(
    "no_in_progress_check", removes="the retry check's mmu_invalidate_in_progress test",
    breaks="a fault that found the page between invalidate_range_start and _end must retry")
SEQ_UNCHECKED_IN_PROGRESS = mutant(
    "seq_unchecked_in_progress", removes="the retry check's sequence comparison while some "
    "invalidation is in progress (only that invalidation's range decides then)",
    breaks="a fault whose page was invalidated and freed after it sampled mmu_invalidate_seq "
           "retries, even while an invalidation of another page is in progress")
SEQ_AFTER_FAULT_IN = mutant(
    "seq_after_fault_in", removes="reading mmu_invalidate_seq before looking up the page",
    breaks="mmu_invalidate_seq is sampled before hva_to_pfn, or a whole invalidation between "
           "the two goes unseen")
TDP_PLAIN_STORE = mutant(
    "tdp_plain_store", removes="the TDP fault's cmpxchg install (load, then store)",
    breaks="under read-mode mmu_lock SPTEs change only by cmpxchg: another fault's SPTE and "
           "its Dirty bit are not overwritten")
SLOW_PF_NO_MARK_DIRTY = mutant(
    "slow_pf_no_mark_dirty", removes="mark_page_dirty when the slow path maps a page writable",
    breaks="dirty logging: a writable SPTE is only installed together with its dirty bit")
SLOW_PF_MARKS_DIRTY_BEFORE_LOCK = mutant(
    "slow_pf_marks_dirty_before_lock", removes="the place of the TDP fault's mark_page_dirty "
    "(make_spte logs the gfn inside the mmu_lock section that installs the writable SPTE; "
    "the mutant logs it before taking mmu_lock)",
    breaks="dirty logging: a harvest between the mark and the install takes the bit, finds "
           "no SPTE to protect, and the writable SPTE installed afterwards is never logged")
NO_GPTE_RECHECK = mutant(
    "no_gpte_recheck", removes="the shadow fault's re-check of the guest PTE under mmu_lock",
    breaks="shadow paging: a guest page-table change between walk and install is retried")
GPTE_RECHECK_BEFORE_REBUILD = mutant(
    "gpte_recheck_before_rebuild", removes="the order of the shadow fault: the guest PTE "
    "re-checked before the table's shadow page is built again (and the table write-protected "
    "and flushed), not after",
    breaks="shadow paging: a guest store through the mapping a vCPU had while the table was "
           "unshadowed lands between the re-check and the write-protection, and the fault "
           "installs the old entry in a page that is in sync")
SHADOW_FAULT_READ_LOCK = mutant(
    "shadow_fault_read_lock", removes="write mode of mmu_lock in the shadow MMU fault",
    breaks="the shadow MMU changes rmaps and indirect pages only with mmu_lock held for write")
SHADOW_REMAP_NO_FLUSH = mutant(
    "shadow_remap_no_flush", removes="the remote TLB flush after a shadow fault replaced a "
    "present SPTE that mapped another page (a guest PTE re-pointed in an unsync page)",
    breaks="TLB: a translation outlives no SPTE -- the old gfn's rmap no longer has the "
           "SPTE, so its swap-out flushes nothing and a vCPU reads the freed frame")
SHADOW_REMAP_DROPS_AD = mutant(
    "shadow_remap_drops_ad", removes="passing the old page's Accessed/Dirty on when a shadow "
    "fault replaces a present SPTE of another page (mmu_spte_clear_no_track instead of "
    "drop_spte's clear_track_bits)",
    breaks="Dirty bit: a guest write through an SPTE reaches the page before the SPTE is "
           "dropped, or the old page's swap-out skips the write-back")
SHADOW_FAULT_WRPROT_NO_FLUSH = mutant(
    "shadow_fault_wrprot_no_flush", removes="the remote TLB flush a shadow fault owes when it "
    "rebuilds a present MMU-writable SPTE without W (the flush mmu_spte_update asks for)",
    breaks="TLB: an SPTE that was MMU-writable may still be cached writable (turning dirty "
           "logging on flushes only after dropping mmu_lock): whoever makes it read-only and "
           "not MMU-writable flushes, or a later write-protection finds nothing to flush and "
           "relies on it while a vCPU still writes through the cached translation")
PAGE_FAULT_NO_SRCU = mutant(
    "page_fault_no_srcu", removes="the page fault's kvm->srcu read side",
    breaks="memslots are used inside kvm->srcu, so a memslot update waits for the fault")
TDP_FAULT_DROPS_AD = mutant(
    "tdp_fault_drops_ad", removes="keeping the old Accessed/Dirty bits when a TDP fault "
    "replaces a present SPTE of the same page",
    breaks="Dirty bit: a Dirty bit set by a guest write through an SPTE reaches the page "
           "before the SPTE stops saying so, or swap-out skips the write-back")
TDP_FAULT_REBUILDS_GOOD_SPTE = mutant(
    "tdp_fault_rebuilds_good_spte", removes="the TDP fault's spurious-fault test: a fault "
    "that finds the present SPTE already allowing its access rebuilds it anyway (a read fault "
    "with dirty logging on rebuilds a writable SPTE without W, and flushes nothing)",
    breaks="TLB: a translation never allows more than its SPTE -- a vCPU that cached the "
           "writable one keeps writing through it, and those writes miss the dirty log")
TDP_FAULT_OVERWRITES_FROZEN = mutant(
    "tdp_fault_overwrites_frozen", removes="the TDP fault's retry on a frozen SPTE (its "
    "cmpxchg installs over the frozen value)",
    breaks="under read-mode mmu_lock only the thread that froze an SPTE writes it: a fault "
           "that reached a table NX recovery is removing must not install into it")
FAULT_MAPS_INVALID_SLOT = mutant(
    "fault_maps_invalid_slot", removes="the slow path's test of KVM_MEMSLOT_INVALID (a fault "
    "on a memslot being deleted or moved maps it like any other)",
    breaks="a deleted or moved memslot's SPTEs are zapped once, after no fault can install "
           "one: a fault that finds the slot marked invalid retries instead")
TDP_FAULT_STALE_CHECK_UNLOCKED = mutant(
    "tdp_fault_stale_check_unlocked", removes="the TDP fault's invalidation check under "
    "mmu_lock (only the lockless pre-check, made before read_lock, is left)",
    breaks="mmu_invalidate_seq and mmu_invalidate_in_progress change under mmu_lock held for "
           "write: only a check made under mmu_lock excludes an invalidation that zaps between "
           "the check and the install")
STALE_ROOT_FAULT_NOT_RETRIED = mutant(
    "stale_root_fault_not_retried", removes="the TDP fault's retry on a root a fast zap "
    "invalidated (is_page_fault_stale): it links its table and installs into the old root",
    breaks="no table is linked into an invalidated root: its zap may have passed that entry "
           "already, and the table outlives the root, out of reach of every later zap")
READONLY_SLOT_WRITABLE = mutant(
    "readonly_slot_writable", removes="the read-only memslot test of a write fault",
    breaks="a read-only memslot is never mapped writable (Host-writable clear)")


def invalidate_retry(vm: VM, mmu_seq: int, hva: int) -> bool:
    """``mmu_invalidate_retry_hva``: must a fault that began at ``mmu_seq`` start over?"""
    vm.mmu_lock.assert_held()
    if NO_INVALIDATE_RETRY in vm.hazards:
        return False
    if vm.mmu_invalidate_in_progress and NO_IN_PROGRESS_CHECK not in vm.hazards:
        in_range = vm.mmu_invalidate_range_start <= hva < vm.mmu_invalidate_range_end
        if in_range or SEQ_UNCHECKED_IN_PROGRESS in vm.hazards:
            return in_range  # broken when not in range: the sequence is never compared
    return vm.mmu_invalidate_seq.load() != mmu_seq


def _stale_unlocked(vm: VM, mmu_seq: int, hva: int) -> bool:
    """``mmu_invalidate_retry_gfn_unsafe``: the same test without ``mmu_lock``, a hint only."""
    if vm.mmu_invalidate_in_progress and \
            vm.mmu_invalidate_range_start <= hva < vm.mmu_invalidate_range_end:
        return True
    return vm.mmu_invalidate_seq.load() != mmu_seq


def page_fault(vcpu: VCPU, va: int, write: bool) -> str:
    """Handle an EPT violation / shadow page fault on guest page ``va``."""
    vm = vcpu.vm
    vm.mmu.check_va(va)
    nosrcu = PAGE_FAULT_NO_SRCU in vm.hazards
    idx = None if nosrcu else vm.srcu.read_lock()
    try:
        slots: Memslots = vm.memslots.srcu_dereference(vm.srcu)
        if vm.mmu.tdp or FAST_PF_INDIRECT in vm.hazards:
            r = fast_page_fault(vcpu, va, write, slots)
            if r in (FIXED, SPURIOUS):
                vcpu.stats["fast_pf" if r == FIXED else "spurious_pf"] += 1
                return r
        r = _slow_page_fault(vcpu, va, write, slots)
        vcpu.stats["retry_pf" if r == RETRY else "slow_pf"] += 1
    finally:
        if not nosrcu:
            vm.srcu.read_unlock(idx)
    if r == RETRY:
        wq = vm.invalidate_wq
        with wq:
            wq.wait_for(lambda: not vm.mmu_invalidate_in_progress, "retry after invalidation")
    return r


def _slow_page_fault(vcpu: VCPU, va: int, write: bool, slots: Memslots) -> str:
    vm = vcpu.vm
    mmu = vm.mmu
    gfn, guest_writable = mmu.guest_pte(va)
    if gfn is None or (write and not guest_writable):
        return GUEST_FAULT  # the guest's own page fault, for the guest to handle
    slot = slots.lookup(gfn)
    if slot is None or (slot.invalid and FAULT_MAPS_INVALID_SLOT not in vm.hazards):
        return MMIO
    host_writable = not slot.readonly or READONLY_SLOT_WRITABLE in vm.hazards
    if write and not host_writable:
        return MMIO  # a write to ROM exits to userspace for emulation
    hva = slot.gfn_to_hva(gfn)
    late = SEQ_AFTER_FAULT_IN in vm.hazards
    mmu_seq = 0 if late else vm.mmu_invalidate_seq.load()
    pfn = vm.host.fault_in(hva)
    if late:
        mmu_seq = vm.mmu_invalidate_seq.load()
    # with dirty logging on, only a write fault gets a writable SPTE: a read fault leaves the
    # page write-protected so that its first write is seen (by the fast path). With PML the
    # CPU sees writes itself: every writable SPTE is built with Dirty set and logged at once.
    writable = host_writable and guest_writable and (write or not slot.logging or mmu.pml)
    # a page the guest maps read-only is not MMU-writable either (make_spte sets MMU-writable
    # only with write access): nothing may make its SPTE writable without a fault
    new = S.make(pfn, writable=writable, host_writable=host_writable,
                 mmu_writable=guest_writable, accessed=True, dirty=writable,
                 ad_disabled=mmu.ad_disabled)
    slots.live()  # the fault keeps using what it looked up (slot, its bitmap and arch data)
    if mmu.tdp_mmu:
        return _tdp_map(vm, va, gfn, slot, hva, mmu_seq, pfn, write, new, vcpu.root)
    return _shadow_map(vm, va, (gfn, guest_writable), slot, hva, mmu_seq, pfn, write, new)


def _tdp_map(vm: VM, va: int, gfn: int, slot: Memslot, hva: int, mmu_seq: int, pfn: int,
             write: bool, new: int, root: TdpRoot | None = None) -> str:
    """The TDP MMU: ``mmu_lock`` for read, the SPTE installed with a cmpxchg.

    Faults on different (or the same) pages run in parallel; one that loses the cmpxchg to
    another fault, the fast path or the CPU simply retries, as RET_PF_RETRY does. So does a
    fault on a root a fast zap invalidated (``is_page_fault_stale``): the vCPU reloads first.
    """
    mmu = vm.mmu
    unlocked = TDP_FAULT_STALE_CHECK_UNLOCKED in vm.hazards
    if unlocked and _stale_unlocked(vm, mmu_seq, hva):
        return RETRY
    # the gfn is logged where the writable SPTE is installed, under mmu_lock, which the
    # harvest takes for write: a harvest sees both the bit and the SPTE, or neither
    early = SLOW_PF_MARKS_DIRTY_BEFORE_LOCK in vm.hazards
    if early and S.is_writable(new) and SLOW_PF_NO_MARK_DIRTY not in vm.hazards:
        slot.mark_dirty(gfn, vm.hazards)
    with vm.mmu_lock.read():
        if not unlocked and invalidate_retry(vm, mmu_seq, hva):
            return RETRY
        if root is not None and root.invalid and STALE_ROOT_FAULT_NOT_RETRIED not in vm.hazards:
            return RETRY
        sp, i = mmu.ensure_page(va, root)
        new = tracked_spte(vm, slot, gfn, new)
        sptep = sp.sptes[i]
        old = sptep.load()
        if old == S.FROZEN and TDP_FAULT_OVERWRITES_FROZEN not in vm.hazards:
            return RETRY  # its table is being removed under read-mode mmu_lock
        if S.is_present(old):
            if S.pfn_of(old) != pfn:
                return RETRY  # only an invalidation changes the pfn, and it zaps first
            if S.hw_allows(old, write) and TDP_FAULT_REBUILDS_GOOD_SPTE not in vm.hazards:
                return FIXED  # fixed by someone else meanwhile
            # A replaced SPTE's Dirty bit is the only record of writes made through it (the
            # page is marked dirty when the SPTE is dropped): keep it, e.g. when a write-tracked
            # gfn's read-only SPTE is rebuilt without W and D.
            if TDP_FAULT_DROPS_AD not in vm.hazards:
                new |= old & (S.ACCESSED | S.DIRTY)
        if TDP_PLAIN_STORE in vm.hazards:
            sptep.store(new)
        elif sptep.cmpxchg(old, new) != old:
            return RETRY
        if not early and S.is_writable(new) and SLOW_PF_NO_MARK_DIRTY not in vm.hazards:
            slot.mark_dirty(gfn, vm.hazards)
    return EMULATE if write and not S.is_writable(new) else FIXED


def _shadow_map(vm: VM, va: int, gpte: tuple[int, bool], slot: Memslot, hva: int,
                mmu_seq: int, pfn: int, write: bool, new: int) -> str:
    """The shadow MMU: ``mmu_lock`` for write; the rmap and its pages change here (indirect
    pages with shadow paging, direct ones with TDP when the TDP MMU is off). ``gpte`` is the
    guest PTE the fault walked: the gfn and whether the guest allows writes."""
    mmu = vm.mmu
    gfn = gpte[0]
    mmu.load()
    mode = vm.mmu_lock.read() if SHADOW_FAULT_READ_LOCK in vm.hazards else vm.mmu_lock.write()
    with mode:
        if invalidate_retry(vm, mmu_seq, hva):
            return RETRY
        early = GPTE_RECHECK_BEFORE_REBUILD in vm.hazards
        if early and mmu.guest_pte(va) != gpte:
            return RETRY  # broken: the table may still be writable to another vCPU
        # built again if a zap freed it: then the table is write-protected and flushed, so
        # the guest entry is re-checked after, as FNAME(fetch) does after each child page
        sp, i = mmu.shadow_page_for(va)
        if not early and mmu.guest_pte(va) != gpte and NO_GPTE_RECHECK not in vm.hazards:
            return RETRY  # the guest changed its page table entry meanwhile
        sptep = sp.sptes[i]
        new = tracked_spte(vm, slot, gfn, new)
        old = sptep.load()
        flush = False
        if S.is_present(old):
            if S.pfn_of(old) != pfn or sp.gfn_at(i) != gfn:
                # the guest re-pointed its PTE without an exit (unsync page): the old page
                # leaves its gfn's rmap here, so no later zap of that gfn would flush for it
                if SHADOW_REMAP_DROPS_AD in vm.hazards:
                    sptep.store(0)  # broken: the old page's Dirty bit goes with the SPTE
                    mmu.rmap_remove(sp, i)
                else:
                    mmu.drop_spte(sp, i)
                flush = SHADOW_REMAP_NO_FLUSH not in vm.hazards
                mmu.note_gfn(sp, i, gfn)
                spte_set(sptep, new)
            elif not S.hw_allows(old, write):
                # an MMU-writable SPTE rebuilt without W asks for a flush (mmu_set_spte): the
                # W it had may be cached still, its flush deferred by whoever cleared it
                flush = spte_update(vm, sptep, new | (old & (S.ACCESSED | S.DIRTY)))
                if SHADOW_FAULT_WRPROT_NO_FLUSH in vm.hazards:
                    flush = False  # broken: a translation cached writable survives
        else:
            mmu.note_gfn(sp, i, gfn)
            spte_set(sptep, new)
        assert slot.arch.rmaps, (f"memslot {slot.id} has no rmaps: the rmap walk of a "
                                        "shadow root dereferences NULL")
        mmu.rmap_add(gfn, sp, i)
        if S.is_writable(new) and SLOW_PF_NO_MARK_DIRTY not in vm.hazards:
            slot.mark_dirty(gfn, vm.hazards)
        if flush:
            flush_remote_tlbs(vm)
    return EMULATE if write and not S.is_writable(new) else FIXED
