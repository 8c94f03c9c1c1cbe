"""The resync of unsync shadow pages when the guest loads CR3 (``kvm_mmu_sync_roots``).

An unsync shadow page lags behind the guest page table it shadows: the guest stores to that
table without an exit and flushes nothing yet (:func:`kvmlock.kvm.guest.write_gpte`). When the
guest does flush -- a CR3 load, or KVM_REQ_MMU_SYNC -- KVM brings every unsync page of the root
up to date before the vCPU runs again (facts from arch/x86/kvm/mmu/mmu.c ``mmu_sync_children``
and ``kvm_sync_page``, in our own code), all with ``mmu_lock`` held for write:

1. the guest tables are write-protected again, and if any was writable TLBs are flushed: from
   here no vCPU can change one without an exit that marks its page unsync again, and none is
   still in the middle of a store through the old mapping;
2. each page is marked sync, and each SPTE is checked against the guest PTE read *now*: one
   that no longer matches is dropped (the next access faults and maps what the guest named);
3. if an SPTE was dropped, TLBs are flushed before ``mmu_lock`` is released. The dropped SPTE's
   gfn has left its rmap, so nothing else would flush for it: when the host later frees that
   page, a vCPU that still caches the translation would reach the freed frame.

The order of 1 and 2 matters as much as each step: a table read before it is protected may be
changed after the read, and nothing would mark the page unsync again.

Before any of that, the sync looks at the pages' unsync flags *without* ``mmu_lock`` and
returns at once if none is set (``is_unsync_root``, read after the CPU's own walk of the guest
table). That early-out is sound only because the fault that lets a page go unsync marks it
before it makes the guest's table writable (``mmu_try_to_unsync_pages``, then the SPTE gets W):
a guest store that reached the table through the writable mapping, followed by a CR3 load on
any vCPU, then finds the flag set.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from kvmlock import runtime
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mutants import mutant, unless

if TYPE_CHECKING:
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["sync_roots"]

SYNC_KEEPS_TABLE_WRITABLE = mutant(
    "sync_keeps_table_writable", removes="write-protecting the guest page table again when "
    "its shadow page is marked sync",
    breaks="shadow paging: a page marked sync is write-protected, so the guest's next change "
           "to its table exits and marks it unsync (or the next CR3 load skips it and the "
           "stale SPTE stays)")
SYNC_WRPROT_NO_FLUSH = mutant(
    "sync_wrprot_no_flush", removes="the TLB flush after the sync write-protected a guest page "
    "table that was writable",
    breaks="shadow paging: a guest table is relied on as write-protected only once no vCPU "
           "can still be storing through its old mapping")
SYNC_READS_BEFORE_WRPROT = mutant(
    "sync_reads_before_wrprot", removes="the order of the sync (the guest PTEs read before "
    "the table is write-protected again)",
    breaks="shadow paging: the sync reads a guest table only once the guest cannot change it "
           "without an exit that marks the page unsync again")
SYNC_NO_FLUSH = mutant(
    "sync_no_flush", removes="the remote TLB flush after the sync of unsync pages dropped "
    "SPTEs",
    breaks="TLB: a translation outlives no SPTE -- the dropped SPTE's gfn leaves its rmap, so "
           "its swap-out flushes nothing and a vCPU reads the freed frame")
SYNC_WITHOUT_MMU_LOCK = mutant(
    "sync_without_mmu_lock", removes="mmu_lock (held for write) around the sync of unsync "
    "pages",
    breaks="the shadow MMU changes rmaps and shadow pages only with mmu_lock held for write, "
           "so a fault adding an SPTE to a gfn's rmap does not lose it to the sync's removal")

SYNC_READ_LOCK = mutant(
    "sync_read_lock", removes="write mode of mmu_lock in the sync of unsync pages (held for "
    "read instead)",
    breaks="the shadow MMU changes rmaps and shadow pages only with mmu_lock held for write: "
           "two vCPUs syncing at once would each drop SPTEs from one gfn's rmap and lose the "
           "other's removal")

SYNC_GATHERS_WITHOUT_MMU_LOCK = mutant(
    "sync_gathers_without_mmu_lock", removes="mmu_lock around gathering the unsync pages "
    "to sync (mmu_unsync_walk done before write_lock, the sync itself under it)",
    breaks="a shadow page found without mmu_lock may be zapped and freed before it is used: "
           "the sync gathers and syncs its pages in one mmu_lock section")

SYNC_WITHOUT_SRCU = mutant(
    "sync_without_srcu", removes="the kvm->srcu read side around the sync of unsync pages",
    breaks="kvm->srcu protects kvm->memslots: the sync finds each dropped SPTE's rmap "
           "through the memslots array, which a memslot update frees (reuses) after its grace "
           "period")

SYNC_KEEPS_REVOKED_WRITE = mutant(
    "sync_keeps_revoked_write", removes="the sync's check of the guest PTE's write permission "
    "(an SPTE is dropped only when the guest PTE names another gfn)",
    breaks="shadow paging: after a sync every SPTE allows no more than the guest PTE it "
           "shadows; a PTE the guest made read-only in an unsync page loses its writable SPTE "
           "(the kernel rebuilds it with the reduced access), or the guest writes a page it "
           "maps read-only")


def _sync_spte(vm: VM, sp: ShadowPage, i: int) -> bool:
    """``sync_spte``: drop entry ``i`` of ``sp`` if the guest PTE now names another gfn, or
    made the page read-only under an SPTE that may be written; True if an SPTE was dropped."""
    mmu = vm.mmu
    cur = sp.sptes[i].load()
    if not S.is_present(cur):
        return False
    va = sp.index * len(sp.sptes) + i
    gfn, writable = mmu.guest_pte(va)
    keeps_write = writable or SYNC_KEEPS_REVOKED_WRITE in vm.hazards
    if gfn == sp.gfn_at(i) and (keeps_write or not cur & (S.W | S.MMU_WRITABLE)):
        return False
    # rmap_remove finds the gfn's rmap in its memslot (slot->arch.rmap), looked up in the
    # memslots array kvm->srcu protects: a deletion frees the slot's arch data after the
    # grace period, and only a reader inside the read side delays that
    slots = vm.memslots.srcu_dereference(vm.srcu)
    # __gfn_to_memslot walks the array it loaded: a visible read, so an update that swaps the
    # array and frees (reuses) it without waiting for this walk is seen as a use-after-free
    slots.live()
    slot = slots.lookup(sp.gfn_at(i))
    if slot is not None and vm.shadow_root_allocated.load():
        slot.arch.rmaps  # noqa: B018 - the read is the use
    return mmu.drop_spte(sp, i)


def _write_protect_tables(vm: VM, pages: list[ShadowPage]) -> None:
    """Step 1: the guest tables of ``pages`` are write-protected again, then TLBs flushed if
    one of them was writable (the flush waits for every vCPU to leave guest mode, so none is
    half-way through a store it began with the table still writable)."""
    if SYNC_KEEPS_TABLE_WRITABLE in vm.hazards:
        return
    rt = runtime.active()
    protected = False
    for sp in pages:
        rt.point(sp, "write-protect guest table", True)
        vm.mmu.check_live(sp, "the sync of unsync pages")
        protected |= sp.gpt_writable
        sp.gpt_writable = False
    if protected and SYNC_WRPROT_NO_FLUSH not in vm.hazards:
        flush_remote_tlbs(vm)


def _any_unsync(pages: list[ShadowPage | None]) -> bool:
    """``is_unsync_root``: the lockless look at the unsync flags (no ``mmu_lock``).

    The kernel reads the root's own count of unsync children there, and the root cannot be
    freed under the vCPU that loaded it; the model reads the flags of the pages below it,
    which a zap clears before it frees a page. Nothing here uses a page beyond that flag:
    the pages to sync are gathered again under ``mmu_lock``."""
    rt = runtime.active()
    rt.point(pages, "read root entries (lockless)", False)  # a zap clears them meanwhile
    for sp in pages:
        if sp is None:
            continue
        rt.point(sp, "read unsync (lockless)", False)
        if sp.unsync:
            return True
    return False


def _unsync_pages(pages: list[ShadowPage | None]) -> list[ShadowPage]:
    """``mmu_unsync_walk``: the unsync pages below the root, as found now."""
    return [sp for sp in pages if sp is not None and sp.unsync]


def sync_roots(vcpu: VCPU) -> None:
    """``kvm_mmu_sync_roots``: bring every unsync shadow page in line with the guest's tables.

    Runs in KVM_RUN (inside ``kvm->srcu``) before the vCPU enters the guest.
    """
    vm = vcpu.vm
    mmu = vm.mmu
    if mmu.tdp:
        return
    mmu.load()
    h = vm.hazards
    with vm.srcu.read():
        if not _any_unsync(mmu.pages):
            return  # nothing to sync: mmu_lock not taken, nothing flushed
    late = SYNC_READS_BEFORE_WRPROT in h
    mode = vm.mmu_lock.read() if SYNC_READ_LOCK in h else vm.mmu_lock.write()
    srcu = contextlib.nullcontext() if SYNC_WITHOUT_SRCU in h else vm.srcu.read()
    early = SYNC_GATHERS_WITHOUT_MMU_LOCK in h
    if early:  # broken: a zap may free what this finds before mmu_lock is taken
        runtime.active().point(mmu.pages, "gather unsync pages", False)
        pages = _unsync_pages(mmu.pages)
    with srcu, unless(SYNC_WITHOUT_MMU_LOCK, h, mode):
        if not early:
            pages = _unsync_pages(mmu.pages)  # mmu_unsync_walk, under mmu_lock
        if not late:
            _write_protect_tables(vm, pages)
        flush = False
        for sp in pages:
            mmu.check_live(sp, f"{vcpu!r}'s sync of unsync pages")
            mmu.mark_synced(sp)
            for i in range(len(sp.sptes)):
                flush |= _sync_spte(vm, sp, i)
        if late:
            _write_protect_tables(vm, pages)  # broken: the table was read while writable
        if flush and SYNC_NO_FLUSH not in h:
            flush_remote_tlbs(vm)
    vm.stats["mmu_syncs"] += 1
