"""Write tracking: a guest page table KVM shadows is write-protected, so KVM sees every change.

When KVM builds a shadow page for a guest page table (with shadow paging, or for the page
tables a nested guest's hypervisor keeps in its memory), the shadow page is only as good as
KVM's knowledge of that table. So the table's gfn is *write-tracked* (facts from
arch/x86/kvm/mmu/mmu.c ``account_shadowed`` and page_track.c, in our own code):

* with ``mmu_lock`` held for write (and inside ``kvm->srcu``) the gfn's track count goes up,
  every SPTE that maps the gfn loses W *and* MMU-writable, and TLBs are flushed before the lock
  is dropped -- from then on the write-protection is relied on. The count lives in the gfn's
  memslot (its arch part), looked up in the memslots array read inside ``kvm->srcu``: a
  memslot delete or move frees that part once the grace period is over, so the read side must
  last until the count is changed;
* a fault that wants to write a tracked gfn installs its SPTE without W and MMU-writable (the
  slow path's ``mmu_try_to_unsync_pages`` refuses), and the write is emulated: KVM performs it
  and updates its shadow pages (:func:`emulate_write`);
* the lockless fast page fault may set W only on an MMU-writable SPTE, which is why clearing
  MMU-writable (not just W, as dirty logging does) is what keeps it out.

A table KVM keeps being asked to emulate writes to is probably no page table any more (the
guest reused the page): after ``WRITE_FLOODING_LIMIT`` emulated writes with no fault using
its shadow page in between, the write zaps that page (facts from ``kvm_mmu_track_write`` and
``detect_write_flooding``, in our own code; :func:`track_write`). The count is an atomic, but
the look-up, the test and the zap are all done under ``mmu_lock`` held for write: two
emulated writes to one gfn cannot both find the page flooded and both zap it. The kernel
skips the test for leaf tables (they go unsync instead of being emulated), so it is the
write-tracked upper-level tables here. Their zap drops no leaf SPTE (the model keeps no
child links in them), but it still goes through the shadow MMU's commit, remote flush first,
then free: the CPU's walk of a nested guest passes through the upper-level page (see
:func:`kvmlock.kvm.guest.nested_guest_walk`), and the paging-structure cache may keep it
between walks, until a flush drops it.

A guest write that reaches a tracked gfn through a writable translation bypasses all of this:
the shadow pages go stale without KVM knowing. The guest side checks it on every write
(:func:`check_hw_write`). The model keeps tracked gfns tracked (they never go unsync, unlike
the leaf tables of :func:`kvmlock.kvm.guest.write_gpte`; no untracking when the shadow page
goes away; a deleted or moved slot's counts go with its arch part).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock import lockdep, runtime
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.shadow import ShadowPage
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mmu.update import spte_update
from kvmlock.kvm.mutants import mutant, unless

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslot
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["WRITE_FLOODING_LIMIT", "account_shadowed", "check_hw_write", "emulate_write",
           "is_write_tracked", "shadow_guest_table", "track_write", "tracked_spte",
           "write_protect_shadowed"]

#: emulated writes without a use that make a shadowed table count as flooded (the kernel's 3)
WRITE_FLOODING_LIMIT = 3

WRPROT_SHADOWED_NO_FLUSH = mutant(
    "shadowed_wrprot_no_flush",
    removes="the TLB flush after write-protecting a newly shadowed guest page table",
    breaks="shadow paging: once a guest page table is shadowed no vCPU writes it through a "
           "translation it cached before")
WRPROT_SHADOWED_FLUSH_AFTER_UNLOCK = mutant(
    "shadowed_wrprot_flush_after_unlock",
    removes="the TLB flush after write-protecting a newly shadowed guest page table made "
            "before mmu_lock is released (made after it instead)",
    breaks="a TLB flush owed for an SPTE that lost W is made before mmu_lock is released: "
           "another path that finds the SPTE read-only owes none and relies on it at once")
WRPROT_SHADOWED_WITHOUT_MMU_LOCK = mutant(
    "shadowed_wrprot_without_mmu_lock",
    removes="mmu_lock (write) around tracking and write-protecting a shadowed gfn",
    breaks="write tracking changes under mmu_lock held for write, so a fault cannot test the "
           "gfn, lose the CPU, and install a writable SPTE after the write-protection")
WRPROT_KEEPS_MMU_WRITABLE = mutant(
    "shadowed_wrprot_keeps_mmu_writable",
    removes="clearing MMU-writable when write-protecting a shadowed gfn (only W, as dirty "
            "logging does)",
    breaks="fast page fault: KVM's own write-protection clears MMU-writable, so the lockless "
           "path cannot undo it")
EMULATED_WRITE_NOT_LOGGED = mutant(
    "emulated_write_not_logged", removes="marking the gfn dirty when KVM emulates a guest write",
    breaks="dirty logging: every guest write reaches the log, the ones KVM performs too")
EMULATED_WRITE_LOGGED_FIRST = mutant(
    "emulated_write_logged_first", removes="the order of the emulated write's two steps (the "
    "gfn logged before the page is written, not after)",
    breaks="dirty logging: a gfn is logged after the write it stands for, or a harvest in "
           "between copies the old contents and clears the bit the write still needed")
EMULATED_WRITE_WITHOUT_SRCU = mutant(
    "emulated_write_without_srcu", removes="the emulated write's kvm->srcu read side",
    breaks="memslots are used inside kvm->srcu, so a memslot update waits for the write")
EMULATED_WRITE_LOGGED_AFTER_SRCU = mutant(
    "emulated_write_logged_after_srcu", removes="the emulated write's logging inside its "
    "kvm->srcu read side (the gfn marked in the slot's dirty bitmap after srcu_read_unlock)",
    breaks="a memslot and its dirty bitmap are used only inside kvm->srcu: a deleted slot's "
           "bitmap is freed once the grace period ends")
SHADOW_TABLE_WITHOUT_SRCU = mutant(
    "shadow_table_without_srcu", removes="KVM_RUN's kvm->srcu read side around building the "
    "first shadow root and accounting a shadowed guest page table",
    breaks="kvm->srcu protects kvm->memslots: the memslot whose write-track count is raised "
           "is freed (deleted or moved) only after its readers left")
TRACK_WRITE_WITHOUT_MMU_LOCK = mutant(
    "track_write_without_mmu_lock", removes="mmu_lock (write) around the emulated write's "
    "look at the written table's shadow page, its flooding test and its zap",
    breaks="a shadow page is zapped under mmu_lock held for write, so exactly one zapper "
           "takes it out and frees it: two emulated writes that both find it flooded would "
           "both zap it")
FLOOD_ZAP_AFTER_UNLOCK = mutant(
    "flood_zap_after_unlock", removes="mmu_lock around the zap of a flooded shadow page (the "
    "look-up and flooding test stay under it; the unlink and zap follow the unlock)",
    breaks="a shadow page is zapped under mmu_lock held for write, in the section that found "
           "it flooded: a second emulated write that takes the lock before the zap finds the "
           "page still linked, floods it too, and both zap it")
FLOODED_PAGE_FREED_WITHOUT_FLUSH = mutant(
    "flooded_page_freed_without_flush", removes="the remote TLB flush of "
    "kvm_mmu_commit_zap_page when the write-flooding zap frees the shadow page of a guest "
    "table (freed at once, as no leaf SPTE was dropped)",
    breaks="a shadow page is freed only once no vCPU can still be walking it: a vCPU's "
           "paging-structure cache may hold the upper-level page, and only the flush drops it")
TRACKED_GFN_MAPPED_WRITABLE = mutant(
    "tracked_gfn_mapped_writable",
    removes="the slow path's write-tracking test (mmu_try_to_unsync_pages)",
    breaks="a write-tracked gfn is never mapped writable: its writes are emulated")


def is_write_tracked(slot: Memslot, gfn: int) -> bool:
    """``kvm_gfn_is_write_tracked``: a visible read, so a change without the lock can race."""
    return slot.arch.write_track(gfn) > 0


def tracked_spte(vm: VM, slot: Memslot, gfn: int, new: int) -> int:
    """The SPTE a fault installs for ``gfn`` of ``slot`` (mmu_lock held): without W and
    MMU-writable if the gfn is write-tracked."""
    vm.mmu_lock.assert_held()
    if TRACKED_GFN_MAPPED_WRITABLE in vm.hazards or not is_write_tracked(slot, gfn):
        return new
    return new & ~(S.W | S.MMU_WRITABLE | S.DIRTY)


def write_protect_shadowed(vm: VM, gfn: int) -> bool:
    """``kvm_mmu_slot_gfn_write_protect`` for a shadowed gfn: W and MMU-writable leave every
    SPTE that maps it (rmap or TDP walk); True when TLBs need a flush."""
    vm.mmu_lock.assert_held()
    clear = S.W if WRPROT_KEEPS_MMU_WRITABLE in vm.hazards else S.W | S.MMU_WRITABLE
    flush = False
    for sp, i in vm.mmu.gfn_sptes(gfn):
        sptep = sp.sptes[i]
        cur = sptep.load()
        if S.is_present(cur) and cur & clear:
            flush |= spte_update(vm, sptep, cur & ~clear)
    return flush


def account_shadowed(vm: VM, gfn: int) -> bool:
    """A shadow page now shadows the guest page table at ``gfn``: track it, write-protect it.

    Called inside ``kvm->srcu`` (``kvm_memslots`` -- the gfn's memslot holds the count, and
    must stay). Once this returns True, no vCPU can write the table without KVM seeing it;
    False if no usable memslot backs the gfn (deleted, or being deleted): the guest's page
    walk fails there, and nothing is shadowed.
    """
    mmu = vm.mmu
    with unless(WRPROT_SHADOWED_WITHOUT_MMU_LOCK, vm.hazards, vm.mmu_lock.write()):
        slots = vm.memslots.srcu_dereference_check(vm.srcu, lockdep.is_held(vm.slots_lock))
        slots.live()  # __gfn_to_memslot walks the array it read
        slot = slots.lookup(gfn)
        if slot is None or slot.invalid:
            return False
        slot.arch.set_write_track(gfn, slot.arch.write_track(gfn) + 1)
        sp = mmu.shadowed.get(gfn)
        if sp is None:  # the table's shadow page, built (again, after a flooding zap)
            mmu.shadowed[gfn] = ShadowPage(gfn, direct=False)
        else:  # a fault used the page: the guest still treats the gfn as a page table
            sp.write_flooding_count.store(0)
        flush = write_protect_shadowed(vm, gfn)  # kvm_mmu_slot_gfn_write_protect(slot)
        # flushed before mmu_lock is dropped: a second shadower finds the SPTE read-only
        # already, owes no flush, and relies on the protection at once
        late = WRPROT_SHADOWED_FLUSH_AFTER_UNLOCK in vm.hazards
        if flush and WRPROT_SHADOWED_NO_FLUSH not in vm.hazards and not late:
            flush_remote_tlbs(vm)
        mmu.wrprot_relied.add(gfn)  # from here on the protection is relied on (audit only)
    if flush and late:
        flush_remote_tlbs(vm)  # broken: after write_unlock(&kvm->mmu_lock)
    return True


def track_write(vm: VM, gfn: int) -> bool:
    """``kvm_mmu_track_write`` after KVM emulated a write to ``gfn``: zap the shadow page of
    the guest table there if the write floods it; True if it did.

    Under ``mmu_lock`` held for write the page is looked up, its flooding count raised and
    tested, and a flooded page prepared for the zap and committed (remote flush, then free)
    before the lock is released. A later fault that shadows the table builds a new page.
    """
    mmu = vm.mmu
    late = FLOOD_ZAP_AFTER_UNLOCK in vm.hazards
    with unless(TRACK_WRITE_WITHOUT_MMU_LOCK, vm.hazards, vm.mmu_lock.write()):
        rt = runtime.active()
        rt.point(mmu.shadowed, "find the written table's shadow page", False)
        sp = mmu.shadowed.get(gfn)
        if sp is None:
            return False
        sp.write_flooding_count.fetch_add(1)  # detect_write_flooding: atomic_inc, then read
        if sp.write_flooding_count.load() < WRITE_FLOODING_LIMIT:
            return False
        if not late:
            _zap_flooded(vm, gfn, sp)
    if late:
        _zap_flooded(vm, gfn, sp)  # broken: another emulated write can find the page meanwhile
    return True


def _zap_flooded(vm: VM, gfn: int, sp: ShadowPage) -> None:
    mmu = vm.mmu
    runtime.active().point(mmu.shadowed, "unlink flooded shadow page", True)
    if mmu.shadowed.get(gfn) is sp:
        del mmu.shadowed[gfn]
    sp.mark_removed("kvm_mmu_track_write")  # kvm_mmu_prepare_zap_page
    vm.stats["mmu_flooded"] += 1
    if FLOODED_PAGE_FREED_WITHOUT_FLUSH in vm.hazards:
        mmu.free_page(sp)  # broken: a vCPU's walk may still pass through it
    else:
        mmu.commit_zap([sp])  # kvm_mmu_remote_flush_or_zap


def shadow_guest_table(vcpu: VCPU, gfn: int) -> bool:
    """``vcpu`` starts shadowing the guest page table at ``gfn`` -- e.g. its first fault in a
    nested guest, whose hypervisor keeps that guest's page tables in its own memory.

    Inside ``kvm->srcu`` (KVM_RUN): the first shadow root gives every memslot its rmaps, then
    the shadow page for the table is built and the gfn accounted as shadowed (False if no
    memslot backs it).
    """
    from kvmlock.kvm.mmu.shadow import first_shadow_root_alloc

    vm = vcpu.vm
    vm.mmu.check_va(gfn)
    with unless(SHADOW_TABLE_WITHOUT_SRCU, vm.hazards, vm.srcu.read()):
        first_shadow_root_alloc(vm)
        return account_shadowed(vm, gfn)


def emulate_write(vcpu: VCPU, gfn: int, value: int) -> bool:
    """The write fault on a tracked gfn is emulated: KVM writes guest memory itself
    (``kvm_vcpu_write_guest``, inside ``kvm->srcu``, through the host mapping, which marks the
    host page dirty), logs it, and updates its shadow pages
    (``kvm_mmu_track_write``; the model counts it, as its guest tables hold no entries here).
    False if no writable memslot backs ``gfn`` (deleted since the fault, say): the write is
    then MMIO, for userspace.
    """
    vm = vcpu.vm
    with unless(EMULATED_WRITE_WITHOUT_SRCU, vm.hazards, vm.srcu.read()):
        slots = vm.memslots.srcu_dereference(vm.srcu)
        slot = slots.lookup(gfn)
        if slot is None or slot.invalid or slot.readonly:
            return False
        first = EMULATED_WRITE_LOGGED_FIRST in vm.hazards
        if first:
            slot.mark_dirty(gfn, vm.hazards)  # broken: a harvest may take the bit right now
        with vm.host.pinned(slot.gfn_to_hva(gfn)) as page:
            page.data.store(value)
            # the write goes through the host's own mapping, whose dirty bit gets the page
            # written back on swap-out (no SPTE says so)
            vm.host.set_page_dirty(page.pfn)
        slots.live()  # the slot and its dirty bitmap are used until here
        late_log = EMULATED_WRITE_LOGGED_AFTER_SRCU in vm.hazards
        if EMULATED_WRITE_NOT_LOGGED not in vm.hazards and not late_log and not first:
            slot.mark_dirty(gfn, vm.hazards)
        track_write(vm, gfn)  # kvm_page_track_write, once the page is written
    if late_log:
        slot.mark_dirty(gfn, vm.hazards)  # broken: the slot may be freed by now
    vm.stats["emulated_writes"] += 1
    return True


def check_hw_write(vcpu: VCPU, va: int, gfn: int | None) -> None:
    """The invariant, where the CPU writes: never to a gfn whose write-protection is relied on
    (no visible step: an audit of the model, atomic with the write)."""
    if gfn is not None and gfn in vcpu.vm.mmu.wrprot_relied:
        raise AssertionError(
            f"{vcpu!r} wrote guest page {va} (gfn {gfn}) through a writable translation, but "
            f"gfn {gfn} holds a shadowed guest page table: the write bypassed KVM and its "
            "shadow pages are stale")
