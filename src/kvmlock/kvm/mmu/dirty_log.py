"""Dirty logging: write-protect, log the first write, harvest and write-protect again.

Turning logging on write-protects every SPTE of the slot (keeping them MMU-writable), so the
next write to each page faults; the fault -- usually the fast path -- makes the SPTE writable
and sets the gfn's bit in the slot's dirty bitmap. Harvesting (``KVM_GET_DIRTY_LOG``) swaps
each bitmap word with zero, write-protects the gfns it found, and flushes TLBs when the
write-protection said so. Without that flush a vCPU could keep writing through a writable
translation it had cached, and those writes would never reach the log.

With Page Modification Logging (``VM(pml=True)``, Intel's PML) the CPU logs instead: when it
sets an SPTE's Dirty bit it records the page, and KVM moves those records into the bitmap.
Logging then needs no fault, so turning it on and harvesting *clear Dirty* rather than W
(``kvm_mmu_slot_leaf_clear_dirty``, ``kvm_mmu_clear_dirty_pt_masked``), each clear passing the
Dirty state to the page and asking for a flush (:func:`~kvmlock.kvm.mmu.update.spte_update`).
The flush is what makes the clear effective: a TLB that still caches the translation with Dirty
set lets the CPU write without setting Dirty again, and such a write is never logged.

:class:`MigrationCopy` is the user of the log, and the log's invariant in executable form: a
destination that copies every harvested page must, after a final harvest, equal the source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlock.kvm.memslots import active_memslots
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mmu.update import spte_update
from kvmlock.kvm.mutants import mutant, unless

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslot
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.vm import VM

__all__ = ["MigrationCopy", "clear_dirty_gfn", "get_dirty_log", "slot_remove_write_access",
           "write_protect_gfn"]


HARVEST_WITHOUT_SLOTS_LOCK = mutant(
    "harvest_without_slots_lock", removes="kvm->slots_lock around KVM_GET_DIRTY_LOG (and the "
    "lockdep-checked memslots lookup with it)",
    breaks="kvm->slots_lock: the harvest is no kvm->srcu reader, so only slots_lock keeps a "
           "memslot update from freeing the bitmap it reads")
HARVEST_LOAD_STORE = mutant(
    "harvest_load_store", removes="the harvest's xchg of each bitmap word (load, then store 0)",
    breaks="dirty logging: a bit set between the harvest's read and its clear is not lost")
HARVEST_NO_FLUSH = mutant(
    "harvest_no_flush", removes="the TLB flush after the harvest write-protected SPTEs",
    breaks="KVM_GET_DIRTY_LOG flushes before returning, so later writes fault and are logged")
HARVEST_FLUSH_LAST_GFN = mutant(
    "harvest_flush_last_gfn", removes="the harvest's flush decision gathered over every gfn "
    "(only the last gfn's write-protection counts)",
    breaks="KVM_GET_DIRTY_LOG flushes if any harvested gfn lost W, or a vCPU keeps writing "
           "through the translation it cached")
HARVEST_WITHOUT_MMU_LOCK = mutant(
    "harvest_without_mmu_lock", removes="mmu_lock around the harvest's write-protection",
    breaks="SPTEs are write-protected with mmu_lock held")
HARVEST_READ_LOCK = mutant(
    "harvest_read_lock", removes="write mode of mmu_lock around the harvest's "
    "write-protection (held for read)",
    breaks="the harvest walks tables and rewrites SPTEs with plain stores, which only write "
           "mode makes safe: it keeps read-mode writers (NX huge-page recovery removing a "
           "table, freezing its SPTEs and freeing it) out")
HARVEST_FLUSH_BEFORE_PROTECT = mutant(
    "harvest_flush_before_protect", removes="the order of the harvest's flush (done before "
    "the SPTEs of the harvested gfns lose Dirty or W, not after)",
    breaks="KVM_GET_DIRTY_LOG flushes after protecting: a translation cached between a flush "
           "and the clear would outlive the harvest")
HARVEST_PROTECTS_BEFORE_XCHG = mutant(
    "harvest_protects_before_xchg", removes="the order of the harvest's two steps on a "
    "bitmap word: the gfns it names are write-protected first and the word taken with xchg "
    "after, instead of xchg first",
    breaks="dirty logging: a write that faults between the protection and the xchg makes its "
           "SPTE writable again and sets a bit the xchg then takes, so the gfn is reported "
           "with a writable SPTE and the writes after the copy are never logged")
WRPROT_KEEPS_W = mutant(
    "wrprot_keeps_w", removes="the write-protection of harvested gfns",
    breaks="dirty logging: after a harvest the next write to the gfn faults and is logged")


LOGGING_NO_WRPROT = mutant(
    "logging_no_wrprot", removes="write-protecting the slot when dirty logging is turned on",
    breaks="dirty logging: from the moment it is on, every first write to a page faults")
LOGGING_WRPROT_NO_FLUSH = mutant(
    "logging_wrprot_no_flush", removes="the TLB flush after write-protecting a slot for logging",
    breaks="dirty logging: no vCPU keeps a writable translation once logging is on")
LOGGING_WRPROT_SHORT = mutant(
    "logging_wrprot_short", removes="the slot's last page from the write-protection when "
    "dirty logging is turned on (the range ends one page early)",
    breaks="dirty logging: from the moment it is on, every first write to a page faults")


def _update_gfn_sptes(vm: VM, gfn: int, change: Callable[[int], int | None]) -> bool:
    """Replace every present SPTE of ``gfn`` by ``change(spte)`` (None: leave it) through
    ``spte_update``; True if TLBs need a flush."""
    vm.mmu_lock.assert_held()
    flush = False
    for sp, i in vm.mmu.gfn_sptes(gfn):
        sptep = sp.sptes[i]
        cur = sptep.load()
        _check_not_freed(sp, "read")
        new = change(cur) if S.is_present(cur) else None
        if new is not None:
            flush |= spte_update(vm, sptep, new)
            _check_not_freed(sp, "wrote")
    return flush


def _check_not_freed(sp: ShadowPage, did: str) -> None:
    # the model's KASAN, with the access: a write-mode walker holds no RCU read side, since
    # no table it reached can be removed while it holds mmu_lock for write
    assert not sp.freed, (
        f"the harvest {did} an SPTE of shadow page {sp.index} after it was freed: a table it "
        "walked was removed and freed under it")


def write_protect_gfn(vm: VM, gfn: int) -> bool:
    """``rmap_write_protect``: clear W on every SPTE of ``gfn``; True if TLBs need a flush."""
    vm.mmu_lock.assert_held()
    if WRPROT_KEEPS_W in vm.hazards:
        return False
    return _update_gfn_sptes(vm, gfn, lambda cur: cur & ~S.W if S.is_writable(cur) else None)


def clear_dirty_gfn(vm: VM, gfn: int) -> bool:
    """``__rmap_clear_dirty`` (PML): clear Dirty on every SPTE of ``gfn``, so the CPU's next
    write sets it again and is logged; True if TLBs need a flush.

    Every SPTE is updated, Dirty or not: the CPU may be setting it right now, and the update's
    exchange (the SPTE is volatile while writable and clean) is what catches that.
    """
    return _update_gfn_sptes(vm, gfn, lambda cur: cur & ~S.DIRTY)


def _protect_gfn(vm: VM, gfn: int) -> bool:
    """Make the next write to ``gfn`` reach the log: clear Dirty (PML) or W."""
    return clear_dirty_gfn(vm, gfn) if vm.mmu.pml else write_protect_gfn(vm, gfn)


def slot_remove_write_access(vm: VM, slot: Memslot) -> None:
    """Logging was turned on: write-protect the whole slot (PML: clear Dirty) under
    ``mmu_lock``, then flush if needed -- after dropping the lock, as
    ``kvm_mmu_slot_apply_flags`` does: the slot must be fully protected only before the
    memslot update returns to userspace, which then reads the log.

    So between the unlock and the flush an SPTE may be read-only while a vCPU still caches it
    writable. Whoever takes mmu_lock meanwhile and relies on a read-only SPTE must not trust
    W: it judges on MMU-writable, which this protection leaves set, and flushes itself when
    it takes that away (see :func:`~kvmlock.kvm.mmu.update.spte_update`)."""
    if LOGGING_NO_WRPROT in vm.hazards:
        return
    with vm.mmu_lock.write():
        flush = False
        end = slot.base_gfn + slot.npages - (LOGGING_WRPROT_SHORT in vm.hazards)
        for gfn in range(slot.base_gfn, end):
            flush |= _protect_gfn(vm, gfn)
    if flush and LOGGING_WRPROT_NO_FLUSH not in vm.hazards:
        flush_remote_tlbs(vm)


def get_dirty_log(vm: VM, slot_id: int) -> list[int]:
    """``KVM_GET_DIRTY_LOG``: the gfns written since the last call, now write-protected
    (PML: their Dirty bits cleared), with TLBs flushed before it returns."""
    unlocked = HARVEST_WITHOUT_SLOTS_LOCK in vm.hazards
    with unless(HARVEST_WITHOUT_SLOTS_LOCK, vm.hazards, vm.slots_lock):
        # broken: the unchecked lookup, so that lockdep has nothing to say
        slot = (vm.memslots.access_pointer() if unlocked else active_memslots(vm)).by_id(slot_id)
        if slot is None:
            raise ValueError(f"get_dirty_log: slot {slot_id} does not exist")
        if not slot.logging:
            raise ValueError(f"get_dirty_log: slot {slot_id} does not have dirty logging on")
        dirty: list[int] = []
        flush = False
        early = HARVEST_FLUSH_BEFORE_PROTECT in vm.hazards
        bitmap = slot.dirty_bitmap
        assert bitmap is not None  # slot.logging
        mode = vm.mmu_lock.read() if HARVEST_READ_LOCK in vm.hazards else vm.mmu_lock.write()
        with unless(HARVEST_WITHOUT_MMU_LOCK, vm.hazards, mode):
            bitmap.live()
            for w, word in enumerate(bitmap):
                bitmap.check_live()
                if not word.load():
                    continue
                if early:
                    flush_remote_tlbs(vm)  # broken: before the SPTEs are protected
                if HARVEST_PROTECTS_BEFORE_XCHG in vm.hazards:
                    seen = word.load()
                    for bit in range(64):
                        if seen >> bit & 1:
                            flush |= _protect_gfn(vm, slot.base_gfn + w * 64 + bit)
                    # broken: a bit the protection's fault re-set is taken with the rest
                    mask = word.xchg(0)
                    dirty += [slot.base_gfn + w * 64 + bit for bit in range(64) if mask >> bit & 1]
                    continue
                if HARVEST_LOAD_STORE in vm.hazards:
                    mask = word.load()
                    word.store(0)
                else:
                    mask = word.xchg(0)
                for bit in range(64):
                    if mask >> bit & 1:
                        gfn = slot.base_gfn + w * 64 + bit
                        dirty.append(gfn)
                        wp = _protect_gfn(vm, gfn)
                        flush = wp if HARVEST_FLUSH_LAST_GFN in vm.hazards else flush or wp
        if flush and not early and HARVEST_NO_FLUSH not in vm.hazards:
            flush_remote_tlbs(vm)
    vm.stats["harvests"] += 1
    return dirty


class MigrationCopy:
    """A live-migration destination fed by the dirty log of one slot."""

    def __init__(self, vm: VM, slot_id: int) -> None:
        self.vm = vm
        self.slot_id = slot_id
        self.dest: dict[int, int] = {}
        self.copied = 0

    def _slot(self) -> Memslot:
        # the migration tool's own view (user space), not a kernel reader
        slot = self.vm.memslots.access_pointer().by_id(self.slot_id)
        if slot is None:
            raise ValueError(f"MigrationCopy: slot {self.slot_id} does not exist")
        return slot

    def round(self) -> list[int]:
        """Harvest the log and copy what it names; returns those gfns."""
        gfns = get_dirty_log(self.vm, self.slot_id)
        slot = self._slot()
        for gfn in gfns:
            self.dest[gfn] = self.vm.host.read(slot.gfn_to_hva(gfn))
            self.copied += 1
        return gfns

    def mismatches(self) -> list[tuple[int, int, int]]:
        """After a final :meth:`round` with the guest stopped: ``(gfn, source, copy)`` that differ.

        Reads without visible operations: call it only once every task has finished.
        """
        slot = self._slot()
        out = []
        for gfn in range(slot.base_gfn, slot.base_gfn + slot.npages):
            src = self.vm.host.contents(slot.gfn_to_hva(gfn))
            if self.dest.get(gfn, 0) != src:
                out.append((gfn, src, self.dest.get(gfn, 0)))
        return out
