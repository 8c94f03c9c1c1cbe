"""The guest side: a vCPU's "hardware" reading and writing guest memory.

An access first looks in the vCPU's TLB; on a miss the CPU walks the SPTE, sets Accessed (and
Dirty on a write) in it atomically, as EPT hardware does, caches the translation and performs
the access. If the SPTE does not allow the access the CPU exits to KVM with a fault, KVM fixes
it (:func:`kvmlock.kvm.mmu.page_fault.page_fault`) and the access is retried. Everything from
the TLB lookup to the memory access happens in guest mode, so a TLB flush either waits for it
or hides the stale translation from it (see :mod:`kvmlock.kvm.vcpu`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock import runtime
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.page_fault import EMULATE, GUEST_FAULT, MMIO, page_fault
from kvmlock.kvm.mmu.page_track import check_hw_write, emulate_write, shadow_guest_table
from kvmlock.kvm.mmu.shadow import GPTE_READONLY
from kvmlock.kvm.mmu.sync import sync_roots
from kvmlock.kvm.mmu.tdp_mmu import kvm_mmu_reload
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mutants import mutant
from kvmlock.kvm.vcpu import TlbEntry

if TYPE_CHECKING:
    from kvmlock.kvm.host import HostPage
    from kvmlock.kvm.memslots import Memslots
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["GuestFault", "flush_pml_buffer", "guest_read", "guest_write", "load_cr3",
           "nested_guest_walk", "set_gpte", "write_gpte"]

GPTE_NO_FLUSH = mutant(
    "gpte_no_flush", removes="the TLB flush after syncing a changed guest page table",
    breaks="shadow paging: after a guest page-table change no vCPU uses the old translation")
GPTE_NO_ZAP = mutant(
    "gpte_no_zap", removes="dropping the SPTE of a changed guest page-table entry (sync)",
    breaks="shadow paging: an SPTE never outlives the guest PTE it shadows")

UNSYNC_BEFORE_MMU_LOCK = mutant(
    "unsync_before_mmu_lock", removes="mmu_lock around marking the changed table's shadow "
    "page unsync (marked before the lock is taken)",
    breaks="kvm->arch.mmu_unsync_pages_lock is only ever taken with kvm->mmu_lock held")
UNSYNC_SAMPLED_BEFORE_MMU_LOCK = mutant(
    "unsync_sampled_before_mmu_lock", removes="reading whether the changed table's shadow "
    "page was unsync already under mmu_lock: the INVLPG path samples it before taking the "
    "lock",
    breaks="shadow paging: a page's unsync state is only meaningful under mmu_lock -- a page "
           "a vCPU's first store made unsync (its table writable) in between is marked in "
           "sync while the guest can still change the table without an exit")
SYNC_TAKES_UNSYNC_LOCK_FIRST = mutant(
    "sync_takes_unsync_lock_first", removes="(adds) the INVLPG sync takes "
    "mmu_unsync_pages_lock before mmu_lock, to read the page's unsync state first",
    breaks="kvm->mmu_lock is taken outside kvm->arch.mmu_unsync_pages_lock")
UNSYNC_MARKED_AFTER_TABLE_WRITABLE = mutant(
    "unsync_marked_after_table_writable", removes="the order of the write-protection fault "
    "on a guest table (mmu_try_to_unsync_pages): the table made writable before its shadow "
    "page is marked unsync",
    breaks="shadow paging: a page is marked unsync before the guest can store to its table "
           "without an exit, because a CR3 load's sync skips, without mmu_lock, a page not "
           "marked")

TABLE_WRITABLE_AFTER_UNLOCK = mutant(
    "table_writable_after_unlock", removes="the write-protection fault on a guest table in one "
    "mmu_lock section: the shadow page marked unsync under mmu_lock, the table made writable "
    "after write_unlock",
    breaks="shadow paging: a CR3 load's sync that runs between the two re-protects the table "
           "and marks the page in sync; the late step makes the table writable again, and the "
           "guest then changes a sync page's table without an exit")

GPTE_FAULT_READ_LOCK = mutant(
    "gpte_fault_read_lock", removes="mmu_lock held for write by the write-protection fault "
    "on a guest table (taken for read)",
    breaks="shadow paging: the fault may build and link the table's shadow page again after "
           "a zap, which only write-mode mmu_lock keeps to one builder")

PML_FLUSH_WITHOUT_SRCU = mutant(
    "pml_flush_without_srcu", removes="the kvm->srcu read side around draining the PML "
    "buffer into the dirty bitmap after a VM exit",
    breaks="memslots are used inside kvm->srcu: a memslot deleted while the vCPU drains its "
           "buffer frees the dirty bitmap the drain writes")

_FAULT = object()
MAX_FAULTS = 10_000


class GuestFault(Exception):
    """The access cannot complete: no memslot backs it (MMIO) or the guest did not map it."""


def _hw_access(vcpu: VCPU, va: int, write: bool, value: int) -> object:
    """One attempt in guest mode; returns the value read, None for a write, or _FAULT."""
    vm = vcpu.vm
    e = vcpu.tlb.get(va)
    # a write through a cached entry needs W *and* Dirty in it; without Dirty the CPU walks
    if e is not None and (not write or (e.writable and e.dirty)):
        vcpu.stats["tlb_hits"] += 1
    else:
        loc = vm.mmu.walk(va, vcpu.root)
        if loc is None:
            return _FAULT
        sp, i = loc
        sptep = sp.sptes[i]
        while True:
            cur = sptep.load()
            # the CPU walks the page it found: it must not have been freed under it (the
            # remote flush before a free waits for this vCPU to leave guest mode)
            vm.mmu.check_live(sp, f"{vcpu!r}'s page walk")
            if not S.hw_allows(cur, write):
                vcpu.tlb.pop(va, None)
                return _FAULT
            if not S.ad_enabled(cur):
                seen = cur
                break
            seen = cur | S.ACCESSED | (S.DIRTY if write else 0)
            if seen == cur or sptep.cmpxchg(cur, seen) == cur:
                break
        gfn = sp.gfn_at(i)
        # The CPU reads no memslots: the model looks, to note which hva this translation
        # stands for (checked below). It is outside kvm->srcu, as the vCPU in guest mode is,
        # so on real threads the array may be replaced and freed meanwhile (no SRCU reader to
        # wait for): not a kernel use-after-free. An update that changes what this gfn maps
        # zaps its SPTEs and flushes, and the flush waits for this vCPU to leave guest mode.
        slot = vm.memslots.access_pointer().find(gfn)
        hva = slot.gfn_to_hva(gfn) if slot is not None else None
        e = vcpu.tlb[va] = TlbEntry(S.pfn_of(cur), S.is_writable(cur), hva, gfn,
                                    S.is_dirty(seen))
        if vm.mmu.pml and seen & ~cur & S.DIRTY:
            # PML: setting Dirty logs the gfn in the vCPU's own buffer; KVM drains it into the
            # dirty bitmap after the exit (flush_pml_buffer)
            vcpu.pml_buffer.append(gfn)
    page = vm.host.pages[e.pfn]
    if write:
        check_hw_write(vcpu, va, e.gfn)
        page.data.store(value)
        _check_frame(vcpu, va, e, page, write)
        return None
    got = page.data.load()
    _check_frame(vcpu, va, e, page, write)
    return got


def _check_frame(vcpu: VCPU, va: int, e: TlbEntry, page: HostPage, write: bool) -> None:
    """The consequence, checked in the same step as the access (after the page's data was
    touched, which the host's free of the frame also writes): the frame must still be the one
    the host maps for the page this translation was made for, not freed (poisoned) or
    reused."""
    assert e.hva is None or page.hva == e.hva, (
        f"{vcpu!r} {'wrote' if write else 'read'} guest page {va} through a translation to "
        f"frame {e.pfn}, which the host has " + (
            "freed" if page.hva is None else f"reused for hva {page.hva}") +
        f" (it was hva {e.hva}'s): a stale mapping outlived the page")


def flush_pml_buffer(vcpu: VCPU) -> None:
    """``vmx_flush_pml_buffer``, run after a VM exit inside the vCPU's ``kvm->srcu`` read side:
    each gfn the CPU logged is marked dirty in the memslot it belongs to *now*
    (``kvm_vcpu_mark_page_dirty``). A memslot deleted meanwhile has taken its bitmap with it, but
    only after a grace period, which waits for this read side."""
    if not vcpu.pml_buffer:
        return
    vm = vcpu.vm
    gfns, vcpu.pml_buffer = vcpu.pml_buffer, []
    if PML_FLUSH_WITHOUT_SRCU in vm.hazards:
        slots = vm.memslots.access_pointer()  # broken: nothing keeps the array or slot alive
        _mark_logged(vm, slots, gfns)
        return
    with vm.srcu.read():
        _mark_logged(vm, vm.memslots.srcu_dereference(vm.srcu), gfns)


def _mark_logged(vm: VM, slots: Memslots, gfns: list[int]) -> None:
    for gfn in gfns:
        slot = slots.lookup(gfn)
        if slot is not None:
            slot.mark_dirty(gfn, vm.hazards)


def _access(vcpu: VCPU, va: int, write: bool, value: int = 0) -> int | None:
    vcpu.vm.mmu.check_va(va)
    if write and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"guest_write: value must be a non-negative integer, got {value!r}")
    mmu = vcpu.vm.mmu
    for _ in range(MAX_FAULTS):
        if vcpu.root is None and mmu.tdp:
            kvm_mmu_reload(vcpu)
        if not vcpu.enter_guest():
            kvm_mmu_reload(vcpu)  # a request was pending: serve it, then enter again
            continue
        try:
            r = _hw_access(vcpu, va, write, value)
        finally:
            vcpu.exit_guest()
            flush_pml_buffer(vcpu)
        if r is not _FAULT:
            vcpu.stats["writes" if write else "reads"] += 1
            return r  # type: ignore[return-value]
        res = page_fault(vcpu, va, write)
        if res == EMULATE:
            gfn = vcpu.vm.mmu.guest_translate(va)
            if gfn is not None:  # else the guest unmapped it meanwhile: fault again
                if not emulate_write(vcpu, gfn, value):
                    res = MMIO  # its memslot went away since the fault
                else:
                    vcpu.stats["writes"] += 1
                    return None
        if res in (MMIO, GUEST_FAULT):
            raise GuestFault(f"{vcpu!r}: {'write' if write else 'read'} of guest page {va} "
                             f"is not backed by memory ({res})")
    raise GuestFault(f"{vcpu!r}: guest page {va} still faults after {MAX_FAULTS} attempts")


def guest_read(vcpu: VCPU, va: int) -> int:
    """The guest on ``vcpu`` reads guest page ``va``."""
    r = _access(vcpu, va, False)
    assert r is not None
    return r


def guest_write(vcpu: VCPU, va: int, value: int) -> None:
    """The guest on ``vcpu`` writes ``value`` to guest page ``va``."""
    _access(vcpu, va, True, value)


def nested_guest_walk(vcpu: VCPU, gfn: int) -> None:
    """The nested guest on ``vcpu`` makes an access whose walk passes through the shadow of
    its hypervisor's page table at ``gfn`` (an upper level of the shadow hierarchy).

    In guest mode the CPU reads the entry above, which points at the upper-level shadow page
    (``mmu.shadowed``), then reads an entry of that page. It keeps the page in its
    paging-structure cache (:attr:`~kvmlock.kvm.vcpu.VCPU.walk_cache`), so later walks start
    there without reading the entry above, until a TLB flush drops it; that is why a zapped
    upper-level page may be freed only after the remote flush, even when it mapped no leaf.
    If the entry above names no page (a flooding zap took it), the walk exits with a fault
    and KVM shadows the table again (:func:`shadow_guest_table`) before the walk is retried.
    Where the walk goes below that page is left out of the model.
    """
    vm = vcpu.vm
    mmu = vm.mmu
    mmu.check_va(gfn)
    rt = runtime.active()
    for _ in range(MAX_FAULTS):
        if not vcpu.enter_guest():
            kvm_mmu_reload(vcpu)
            continue
        try:
            sp = vcpu.walk_cache.get(gfn)
            if sp is None:
                rt.point(mmu.shadowed, "walk: read the entry above the table's shadow", False)
                sp = mmu.shadowed.get(gfn)
            if sp is not None:
                sp.sptes[gfn % len(sp.sptes)].load()  # the walk reads the upper-level page
                mmu.check_live(sp, f"{vcpu!r}'s nested page walk")
                vcpu.walk_cache[gfn] = sp
                return
        finally:
            vcpu.exit_guest()
        if not shadow_guest_table(vcpu, gfn):
            raise GuestFault(f"{vcpu!r}: the nested guest's page table at gfn {gfn} is not "
                             "backed by memory")
    raise GuestFault(f"{vcpu!r}: the walk through gfn {gfn} still faults after {MAX_FAULTS} "
                     "attempts")


def _gpte_target(vm: VM, va: int, gfn: int | None, who: str) -> ShadowPage:
    """Check a guest page-table change's arguments; the shadow page that shadows ``va``."""
    mmu = vm.mmu
    if mmu.tdp:
        raise ValueError(f"{who}: the VM uses TDP; guest page tables are not shadowed")
    mmu.check_va(va)
    if gfn is not None and (not isinstance(gfn, int) or isinstance(gfn, bool) or
                            not 0 <= gfn < GPTE_READONLY - 1):
        raise ValueError(f"{who}: gfn must be a non-negative integer below 2**40, or None, "
                         f"got {gfn!r}")
    mmu.load()
    loc = mmu.walk(va)
    if loc is None:  # a zap freed the page: shadow the table again
        with vm.mmu_lock.write():
            return mmu.shadow_page_for(va)[0]
    return loc[0]


def _gpte(gfn: int | None, writable: bool) -> int:
    """The guest PTE's value in the model's guest table."""
    return 0 if gfn is None else (gfn + 1) | (0 if writable else GPTE_READONLY)


def set_gpte(vm: VM, va: int, gfn: int | None, *, writable: bool = True) -> None:
    """Shadow paging: the guest points ``va`` at ``gfn`` (None: unmaps it; ``writable=False``:
    maps it read-only) and flushes it.

    The write leaves the shadow page out of date (*unsync*, recorded under
    ``mmu_unsync_pages_lock``); the guest's INVLPG that follows makes KVM sync it -- here by
    dropping the stale SPTE -- and flush, all under ``mmu_lock`` held for write. A page that
    was unsync already (:func:`write_gpte`) stays so: the INVLPG syncs this entry only.
    """
    mmu = vm.mmu
    sp = _gpte_target(vm, va, gfn, "set_gpte")
    i = va % len(sp.sptes)
    inverted = SYNC_TAKES_UNSYNC_LOCK_FIRST in vm.hazards
    early = UNSYNC_BEFORE_MMU_LOCK in vm.hazards
    sampled = early or UNSYNC_SAMPLED_BEFORE_MMU_LOCK in vm.hazards
    if sampled:
        runtime.active().point(sp, "read unsync", False)
        was_unsync = sp.unsync  # broken: mmu_lock is not held yet
    if early:
        mmu.mark_unsync(sp)  # broken: mmu_lock is not held yet
    with vm.mmu_lock.write():
        if not sampled:
            sp = mmu.shadow_page_for(va)[0]  # the page found above may have been zapped
        mmu.gpt[va].store(_gpte(gfn, writable))
        if not sampled:
            was_unsync = sp.unsync
        if not early:
            mmu.mark_unsync(sp)
        if not inverted:
            _sync_gpte(vm, sp, i)
            if not was_unsync:
                mmu.mark_synced(sp)
    if inverted:
        # broken: mmu_unsync_pages_lock held from before mmu_lock (mark_unsync nests it inside)
        with vm.mmu_unsync_pages_lock, vm.mmu_lock.write():
            _sync_gpte(vm, sp, i)
            if sp.unsync:
                sp.unsync = False
                mmu._count_unsync(-1)  # noqa: SLF001 - mark_synced, its lock already held


def write_gpte(vcpu: VCPU, va: int, gfn: int | None, *, writable: bool = True) -> None:
    """Shadow paging: the guest on ``vcpu`` stores a new entry for ``va`` in its page table
    (``writable=False``: a read-only one), and flushes nothing yet.

    While its shadow page is in sync the table is write-protected, so the store exits; KVM
    lets the page go *unsync* (``mmu_try_to_unsync_pages``: ``mmu_lock`` for write, the page
    marked under ``mmu_unsync_pages_lock``), makes the table writable to the guest, and the
    store is retried. From then on the guest changes that table with plain stores, no exit:
    the shadow page's SPTEs keep mapping what the entries named before, until a fault on the
    changed page installs the new translation over the old one (:mod:`page_fault`) or the
    guest's flush syncs the page. The store itself is a guest-mode access, so a remote TLB
    flush waits for it.
    """
    vm = vcpu.vm
    sp = _gpte_target(vm, va, gfn, "write_gpte")
    rt = runtime.active()
    late_unsync = UNSYNC_MARKED_AFTER_TABLE_WRITABLE in vm.hazards
    apart = TABLE_WRITABLE_AFTER_UNLOCK in vm.hazards
    while True:
        vcpu.enter_guest()
        try:
            # the table as it is mapped now: unshadowed (the page zapped) is writable too; the
            # walk's read of the entry is a visible read, ordered against a zap's unlink and a
            # fault's rebuild of the page, and the flag is read at a read of the page found
            cur = vm.mmu.walk(va)
            if cur is not None:
                rt.point(cur[0], "read guest table mapping", False)
            if cur is None or cur[0].gpt_writable:
                vm.mmu.gpt[va].store(_gpte(gfn, writable))
                return
        finally:
            vcpu.exit_guest()
        mode = vm.mmu_lock.read() if GPTE_FAULT_READ_LOCK in vm.hazards else vm.mmu_lock.write()
        with vm.srcu.read(), mode:  # the write-protection fault on the table
            sp = vm.mmu.shadow_page_for(va)[0]  # the page seen in guest mode may be zapped
            # marked first: a CR3 load on another vCPU reads the flag without mmu_lock
            # (sync_roots), after its guest may already have stored through the table
            if not late_unsync:
                vm.mmu.mark_unsync(sp)
            if not apart:
                rt.point(sp, "map guest table writable", True)
                sp.gpt_writable = True
            if late_unsync:
                vm.mmu.mark_unsync(sp)  # broken: the table was writable before the mark
        if apart:  # broken: a sync may re-protect the page between the unlock and this
            rt.point(sp, "map guest table writable", True)
            sp.gpt_writable = True


def load_cr3(vcpu: VCPU) -> None:
    """Shadow paging: the guest on ``vcpu`` loads CR3, flushing its own translations.

    Before the vCPU runs the guest again KVM syncs every unsync shadow page (KVM_REQ_MMU_SYNC,
    :func:`kvmlock.kvm.mmu.sync.sync_roots`) and flushes the vCPU's TLB. Other vCPUs keep
    what they cached until their own guest flushes (or KVM's remote flushes) drop it.
    """
    vm = vcpu.vm
    if vm.mmu.tdp:
        raise ValueError("load_cr3: the VM uses TDP; guest page tables are not shadowed")
    sync_roots(vcpu)
    vcpu.flush_tlb()


def _sync_gpte(vm: VM, sp: ShadowPage, i: int) -> None:
    """The INVLPG's sync of one changed entry: drop its SPTE and flush (``mmu_lock`` held)."""
    zapped = GPTE_NO_ZAP not in vm.hazards and vm.mmu.drop_spte(sp, i)
    if zapped and GPTE_NO_FLUSH not in vm.hazards:
        flush_remote_tlbs(vm)
