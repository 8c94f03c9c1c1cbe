"""Memslots: which guest frames (gfns) are backed by which host pages, and how that changes.

The active memslots array is immutable and published through an RCU-style pointer: readers
(page faults, MMU notifiers) look it up inside ``kvm->srcu``'s read side and may keep using the
array they saw; an update builds a new array and swaps the pointer. The swap protocol follows
kvm_main.c (facts only):

1. the caller holds ``kvm->slots_lock``; the update takes ``kvm->slots_arch_lock``;
2. before the swap it waits, under ``kvm->mn_invalidate_lock``, until no MMU-notifier
   invalidation is active (``mn_active_invalidate_count == 0``), sleeping on
   ``kvm->mn_memslots_update_rcuwait`` with the spinlock dropped -- so that each
   invalidate_range_start and its _end see the same array;
3. it swaps, drops ``slots_arch_lock`` and waits for an SRCU grace period, after which no
   reader can still use the old array.

Deleting or moving a slot first publishes a copy marked *invalid* (new faults on it stop), zaps
its SPTEs, then publishes the final array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kvmlock import lockdep, runtime
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import Atomic64, RWSemaphore

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM
    from kvmlock.sync import RcuPointer

__all__ = ["LOG_DIRTY_PAGES", "READONLY", "DirtyBitmap", "Memslot", "Memslots", "MsrFilter",
           "Retired", "SlotArch", "active_memslots", "retire", "set_memory_region"]

#: KVM_MEM_LOG_DIRTY_PAGES
LOG_DIRTY_PAGES = 1
#: KVM_MEM_READONLY: the guest may read the slot; a write exits to userspace (ROM, flash)
READONLY = 2

MARK_DIRTY_NONATOMIC = mutant(
    "mark_dirty_nonatomic", removes="the atomic set_bit of mark_page_dirty (load, then store)",
    breaks="dirty logging: two vCPUs logging gfns of one bitmap word both keep their bit")
SWAP_WITHOUT_WAITING = mutant(
    "swap_without_waiting", removes="the memslot update's wait for active invalidations",
    breaks="invalidate_range_start and _end see the same memslots (mn_active_invalidate_count)")
SWAP_RECHECK_ONCE = mutant(
    "swap_recheck_once", removes="the memslot update's re-check of mn_active_invalidate_count "
    "after each wake-up (its while loop made an if)",
    breaks="a memslot update swaps only while no invalidation is active: the one that "
           "starts between the wake-up and the lock is waited for too")
NOTIFIER_USES_RWSEM = mutant(
    "notifier_uses_rwsem", removes="the open-coded count + rcuwait fence (an rwsem instead)",
    breaks="a reclaim nested in an invalidation must not block behind a memslot update")
DELETE_ZAPS_BEFORE_SYNC = mutant(
    "delete_zaps_before_sync", removes="the SRCU grace period between invalidating and zapping",
    breaks="a deleted memslot's SPTEs are zapped only after every reader of the old array left")
FREE_BEFORE_GRACE_PERIOD = mutant(
    "free_before_grace_period", removes="synchronize_srcu before freeing an old memslots "
    "array, I/O bus or MSR filter",
    breaks="kvm->srcu: what readers reached is freed only after a grace period")
SLOTS_ARCH_LOCK_ACROSS_SYNC = mutant(
    "slots_arch_lock_across_sync", removes="dropping slots_arch_lock before synchronize_srcu",
    breaks="slots_arch_lock is taken inside kvm->srcu readers, so it is never held across "
           "synchronize_srcu")
MEMSLOT_UPDATE_LOCKS_VCPUS = mutant(
    "memslot_update_locks_vcpus", removes="(adds) every vcpu->mutex taken under slots_lock by "
    "a memslot create",
    breaks="vcpu->mutex is taken outside kvm->slots_lock")
MEMSLOT_COMMIT_LOCKS_VCPUS = mutant(
    "memslot_commit_locks_vcpus", removes="(adds) every vcpu->mutex taken under "
    "slots_arch_lock by a memslot create",
    breaks="vcpu->mutex is taken outside kvm->slots_arch_lock")
MOVE_KEEPS_OLD_SPTES = mutant(
    "move_keeps_old_sptes", removes="the zap of a moved memslot's old gfns (only a deletion "
    "zaps)",
    breaks="no SPTE maps a gfn no memslot backs: moving a slot drops the mappings of its old "
           "gfns, as deleting it does (kvm_arch_flush_shadow_memslot)")
MOVED_SLOT_WITHOUT_RMAPS = mutant(
    "moved_slot_without_rmaps", removes="the rmaps of a moved memslot once a shadow root "
    "exists (only a created slot gets them)",
    breaks="once a shadow root exists every memslot has its rmaps: a moved slot's metadata is "
           "new, indexed by its new gfns (kvm_alloc_memslot_metadata for CREATE and MOVE)")
FLAGS_CHANGE_NEW_ARCH = mutant(
    "flags_change_new_arch", removes="the arch data a flags-only memslot change keeps (it "
    "gets fresh metadata, as a created slot does)",
    breaks="a flags-only change (dirty logging on or off) keeps the slot's rmaps and "
           "write-track counts: a slot without rmaps after the first shadow root is a NULL "
           "rmap walk, and a shadowed guest table that loses its count is mapped writable")
BITMAP_FREED_BEFORE_SWAP = mutant(
    "bitmap_freed_before_swap", removes="freeing a dirty bitmap the new memslot does not keep "
    "only after the swap and its grace period (freed before the swap)",
    breaks="kvm->srcu: a vCPU that looked the slot up inside its read side may still mark a "
           "page dirty in the old bitmap until the grace period ends")
ARCH_FREE_BEFORE_FINAL_SWAP = mutant(
    "arch_free_before_final_swap", removes="freeing a deleted or moved memslot's arch data "
    "(rmaps, write tracking) only after the final swap and its grace period (freed as soon "
    "as the invalid copy is published and the slot zapped)",
    breaks="kvm->srcu: the invalid copy shares the slot's arch data, and an MMU notifier "
           "walking it zaps through its rmaps until the final array is in and it has left")
MEMSLOTS_PUBLISHED_AFTER_UNLOCK = mutant(
    "memslots_published_after_unlock", removes="publishing the new memslots array with "
    "mn_invalidate_lock still held (assigned after the unlock that follows the wait)",
    breaks="the array is swapped in the same mn_invalidate_lock section that saw no "
           "invalidation active: one that counts itself later walks the new array at its start "
           "and at its end")
LOGGING_WRPROT_BEFORE_SWAP = mutant(
    "logging_wrprot_before_swap", removes="write-protecting a slot for dirty logging once "
    "the memslots that turn logging on are published (done before the swap, when the "
    "update is prepared)",
    breaks="dirty logging: a fault that still finds the slot without logging installs a "
           "writable SPTE and logs nothing, so the write-protection for logging comes after "
           "every fault sees logging on")
ROOTS_SAMPLED_BEFORE_SLOTS_ARCH_LOCK = mutant(
    "roots_sampled_before_slots_arch_lock", removes="testing whether a shadow root exists "
    "(the new slot needs rmaps) under slots_arch_lock (tested before the lock is taken)",
    breaks="slots_arch_lock orders the rmap allocation with a memslot being created: the "
           "first shadow root's allocation either sees the slot or the slot's update sees the "
           "root")
MEMSLOT_UPDATE_WITHOUT_SLOTS_LOCK = mutant(
    "memslot_update_without_slots_lock", removes="kvm->slots_lock around a memslot update",
    breaks="kvm->slots_lock protects memslot updates (the update side of kvm->memslots)")


@dataclass(frozen=True, eq=False)
class Memslot:
    """gfns ``[base_gfn, base_gfn + npages)`` backed by hvas ``[hva, hva + npages)``."""

    id: int
    base_gfn: int
    npages: int
    hva: int
    flags: int = 0
    invalid: bool = False
    #: one Atomic64 per 64 gfns; shared by every copy of the slot (as the kernel shares it)
    dirty_bitmap: DirtyBitmap | None = None
    #: ``kvm_arch_memory_slot``: shared by every copy of the slot, changed under slots_arch_lock
    arch: SlotArch = field(default_factory=lambda: SlotArch())

    @property
    def readonly(self) -> bool:
        return bool(self.flags & READONLY)

    @property
    def logging(self) -> bool:
        return bool(self.flags & LOG_DIRTY_PAGES) and self.dirty_bitmap is not None

    def has_gfn(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    def gfn_to_hva(self, gfn: int) -> int:
        return self.hva + (gfn - self.base_gfn)

    def hva_range_to_gfns(self, start: int, end: int) -> tuple[int, int] | None:
        """The gfns of this slot whose hvas fall in ``[start, end)``, or None."""
        lo = max(start, self.hva)
        hi = min(end, self.hva + self.npages)
        if lo >= hi:
            return None
        return self.base_gfn + (lo - self.hva), self.base_gfn + (hi - self.hva)

    def mark_dirty(self, gfn: int, hazards: frozenset[str] = frozenset()) -> None:
        """``mark_page_dirty_in_slot``: set the gfn's bit in the dirty bitmap (atomically)."""
        if self.dirty_bitmap is None or not self.flags & LOG_DIRTY_PAGES:
            return
        rel = gfn - self.base_gfn
        self.dirty_bitmap.live()  # inside kvm->srcu: freed only after a grace period
        word = self.dirty_bitmap[rel // 64]
        if MARK_DIRTY_NONATOMIC in hazards:
            word.store(word.load() | 1 << (rel % 64))
        else:
            word.fetch_or(1 << (rel % 64))


class Retired:
    """Something readers reach through an :class:`RcuPointer` inside ``kvm->srcu``'s read side:
    the updater frees it once a grace period has passed; a use after that is a use-after-free."""

    __slots__ = ("freed", "_wq")
    what = "object"

    def __init__(self) -> None:
        self.freed = False
        self._wq = runtime.active().waitq(self)

    def live(self) -> None:
        """A reader's use of it: a visible step, asserting it was not freed (the model's KASAN)."""
        self._wq.point(f"use {self.what}", False)
        self.check_live()

    def check_live(self) -> None:
        assert not self.freed, f"{self!r}: {self.what} used after it was freed"

    def free(self) -> None:
        """``kfree`` once no reader can hold it (a visible step a reader's use races with)."""
        self._wq.point(f"free {self.what}", True)
        self.freed = True


class SlotArch(Retired):
    """The arch part of a memslot (``kvm_arch_memory_slot``): its reverse maps, allocated by the
    first shadow root, and its write-track counts.

    The rmaps are allocated lazily (the TDP MMU needs none until a shadow root exists), from
    inside a ``kvm->srcu`` read side, so ``slots_arch_lock`` is what orders the allocation with
    a memslot update copying the slot: a slot created after the allocation must get its rmaps
    at creation, one created before it must be seen by the allocation.

    The write-track count of a gfn (``gfn_write_track``) lives here too, so whoever changes it
    found the slot in a memslots array and must stay inside ``kvm->srcu`` until done: deleting
    or moving the slot frees this part (``kvm_arch_free_memslot``) once the grace period after
    the final swap is over.
    """

    __slots__ = ("slot_id", "_rmaps", "_write_track")
    what = "memslot arch data (rmaps, write tracking)"

    def __init__(self, slot_id: int | None = None) -> None:
        super().__init__()
        self.slot_id = slot_id
        self._rmaps = False
        self._write_track: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<slot {self.slot_id}'s arch data>"

    @property
    def rmaps(self) -> bool:
        """Whether the reverse maps are allocated (a visible read: the allocation races)."""
        runtime.active().point(self, "read slot->arch.rmap", False)
        self.check_live()
        return self._rmaps

    def alloc_rmaps(self) -> None:
        """``memslot_rmap_alloc`` (a visible write)."""
        runtime.active().point(self, "alloc slot->arch.rmap", True)
        self.check_live()
        self._rmaps = True

    def has_rmaps(self) -> bool:
        """For checks after a run: no scheduling point."""
        return self._rmaps

    def write_track(self, gfn: int) -> int:
        """The gfn's write-track count (a visible read: an unlocked change races it)."""
        runtime.active().point(self, "read gfn_write_track", False)
        self.check_live()
        return self._write_track.get(gfn, 0)

    def set_write_track(self, gfn: int, n: int) -> None:
        """Store the gfn's count (a visible write; the caller read it first, so the change is
        a read-modify-write that only ``mmu_lock`` makes atomic)."""
        runtime.active().point(self, "write gfn_write_track", True)
        self.check_live()
        self._write_track[gfn] = n

    def peek_write_track(self, gfn: int) -> int:
        """For checks: no scheduling point."""
        return self._write_track.get(gfn, 0)


def retire(vm: VM, pointer: RcuPointer, new: Retired, holding: Any) -> None:
    """Publish ``new`` through ``pointer``, wait for a grace period, free the old object;
    the caller holds the lock ``holding`` that serialises updates of the pointer."""
    old: Retired = pointer.dereference_protected(lockdep.is_held(holding))
    pointer.assign(new)
    if not vm.hazards.free_before_grace_period:
        vm.srcu.synchronize()
    old.free()


class MsrFilter(Retired):
    """``kvm->arch.msr_filter``: which MSRs the guest may access, one immutable copy."""

    __slots__ = ("denied",)
    what = "MSR filter"

    def __init__(self, denied: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.denied = denied

    def __repr__(self) -> str:
        return f"<MsrFilter denies {sorted(self.denied)}>"


class DirtyBitmap(Retired):
    """A slot's dirty bitmap (one Atomic64 per 64 gfns). Turning logging off or deleting the
    slot frees it once a grace period has passed; ``KVM_GET_DIRTY_LOG`` is no SRCU reader and
    relies on ``kvm->slots_lock`` instead, so a harvest without it can touch a freed bitmap."""

    __slots__ = ("slot_id", "words")
    what = "dirty bitmap"

    def __init__(self, slot_id: int, npages: int) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.words = tuple(Atomic64(0, name=f"slot{slot_id}.dirty[{i}]")
                           for i in range((npages + 63) // 64))

    def __getitem__(self, i: int) -> Atomic64:
        return self.words[i]

    def __iter__(self) -> Iterator[Atomic64]:
        return iter(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"<slot {self.slot_id}'s dirty bitmap>"


class Memslots(Retired):
    """One immutable generation of the memslots array."""

    __slots__ = ("slots", "generation")
    what = "memslots array"

    def __init__(self, slots: tuple[Memslot, ...] = (), generation: int = 0) -> None:
        super().__init__()
        self.slots = tuple(sorted(slots, key=lambda s: s.base_gfn))
        self.generation = generation

    def lookup(self, gfn: int) -> Memslot | None:
        self.check_live()
        return self.find(gfn)

    def find(self, gfn: int) -> Memslot | None:
        """:meth:`lookup` without the use-after-free check: for the model's own bookkeeping
        where no kernel code reads the array (the CPU in guest mode, say)."""
        for s in self.slots:
            if s.has_gfn(gfn):
                return s
        return None

    def by_id(self, slot_id: int) -> Memslot | None:
        for s in self.slots:
            if s.id == slot_id:
                return s
        return None

    def overlapping(self, start: int, end: int) -> list[tuple[Memslot, int, int]]:
        """Slots whose hvas meet ``[start, end)``, with the gfn range that does."""
        self.check_live()
        out = []
        for s in self.slots:
            r = s.hva_range_to_gfns(start, end)
            if r is not None:
                out.append((s, r[0], r[1]))
        return out

    def with_slot(self, slot: Memslot | None, drop: int | None = None) -> Memslots:
        keep = [s for s in self.slots if s.id != drop and (slot is None or s.id != slot.id)]
        if slot is not None:
            keep.append(slot)
        return Memslots(tuple(keep), self.generation + 1)

    def __repr__(self) -> str:
        return f"<Memslots gen={self.generation} {[s.id for s in self.slots]}>"


def active_memslots(vm: VM) -> Memslots:
    """``kvm_memslots()``: the active array, read inside the ``kvm->srcu`` read side or by a
    ``slots_lock`` holder (the only tasks that swap it)."""
    return vm.memslots.srcu_dereference_check(vm.srcu, lockdep.is_held(vm.slots_lock))


# ------------------------------------------------------------------------- updates

CREATE, DELETE, MOVE, FLAGS_ONLY = "create", "delete", "move", "flags"


def _swap_active_memslots(vm: VM, new: Memslots) -> None:
    """Publish ``new``: wait out active invalidations, swap, drop slots_arch_lock, sync SRCU,
    and free the old array."""
    # the array being replaced; stable here, only slots_lock holders swap it
    old: Memslots = active_memslots(vm)
    if NOTIFIER_USES_RWSEM in vm.hazards:
        rw = _notifier_rwsem(vm)
        rw.down_write()
        vm.memslots.assign(new)
        rw.up_write()
    else:
        lock = vm.mn_invalidate_lock
        w = vm.mn_memslots_update_rcuwait
        lock.lock()
        w.prepare()
        while vm.mn_active_invalidate_count and SWAP_WITHOUT_WAITING not in vm.hazards:
            # the count is read under the lock its decrement takes, and the sleep state is
            # set before the lock is dropped: the wake-up at zero cannot come too early
            state = w.set_current_state()
            lock.unlock()
            w.schedule(state)
            lock.lock()
            if SWAP_RECHECK_ONCE in vm.hazards:
                break  # broken: woken, it goes on without looking at the count again
        w.finish()
        if MEMSLOTS_PUBLISHED_AFTER_UNLOCK in vm.hazards:
            lock.unlock()
            vm.memslots.assign(new)  # broken: an invalidation may count itself in between
        else:
            vm.memslots.assign(new)
            lock.unlock()
    if SLOTS_ARCH_LOCK_ACROSS_SYNC in vm.hazards:
        vm.srcu.synchronize()  # broken: a reader taking slots_arch_lock waits for us, we for it
        vm.slots_arch_lock.unlock()
    else:
        vm.slots_arch_lock.unlock()
        if FREE_BEFORE_GRACE_PERIOD not in vm.hazards:
            vm.srcu.synchronize()
    old.free()  # the old array is reused for the next update


def _notifier_rwsem(vm: VM) -> RWSemaphore:
    """The historical fence (an rwsem read-held from invalidate start to end); broken variant."""
    rw = getattr(vm, "mmu_notifier_slots_lock", None)
    if rw is None:
        rw = RWSemaphore("kvm->mmu_notifier_slots_lock")
        vm.mmu_notifier_slots_lock = rw
    return rw


def set_memory_region(
    vm: VM,
    slot_id: int,
    *,
    base_gfn: int = 0,
    npages: int = 0,
    hva: int = 0,
    flags: int = 0,
) -> str:
    """``KVM_SET_USER_MEMORY_REGION``: create, delete (``npages=0``), move or re-flag a slot.

    Returns which change it was. Bad arguments raise ``ValueError`` before any lock is taken.
    """
    for what, v in (("slot_id", slot_id), ("base_gfn", base_gfn), ("npages", npages),
                    ("hva", hva), ("flags", flags)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"set_memory_region: {what} must be a non-negative integer, got {v!r}")
    if flags & ~(LOG_DIRTY_PAGES | READONLY):
        raise ValueError(f"set_memory_region: unknown flags {flags:#x} "
                         f"(LOG_DIRTY_PAGES=1, READONLY=2)")
    if npages and vm.host is not None and hva + npages > vm.host.nr_hva:
        raise ValueError(f"set_memory_region: hvas [{hva}, {hva + npages}) exceed the host's "
                         f"{vm.host.nr_hva} pages")
    with unless(MEMSLOT_UPDATE_WITHOUT_SLOTS_LOCK, vm.hazards, vm.slots_lock):
        cur = active_memslots(vm)  # stable: only slots_lock holders swap it
        old = cur.by_id(slot_id)
        if npages == 0:
            if old is None:
                raise ValueError(f"set_memory_region: slot {slot_id} does not exist")
            change, new = DELETE, None
        else:
            for s in cur.slots:
                if s.id != slot_id and s.base_gfn < base_gfn + npages and \
                        base_gfn < s.base_gfn + s.npages:
                    raise ValueError(f"set_memory_region: gfns [{base_gfn}, {base_gfn + npages})"
                                     f" overlap slot {s.id}")
            if old is None:
                change = CREATE
            elif (old.base_gfn, old.npages, old.hva) == (base_gfn, npages, hva):
                change = FLAGS_ONLY
            elif old.npages == npages and old.hva == hva:
                change = MOVE
            else:
                raise ValueError("set_memory_region: a slot can only be moved or re-flagged; "
                                 "delete it first to resize it")
            # kvm_prepare_memory_region: logging keeps the bitmap it has, or gets one
            bitmap = None
            if flags & LOG_DIRTY_PAGES:
                bitmap = old.dirty_bitmap if old is not None else None
                if bitmap is None:
                    bitmap = DirtyBitmap(slot_id, npages)
            keep = change == FLAGS_ONLY and FLAGS_CHANGE_NEW_ARCH not in vm.hazards
            arch = old.arch if keep and old is not None else SlotArch(slot_id)
            new = Memslot(slot_id, base_gfn, npages, hva, flags, False, bitmap, arch)
        if vm.host is not None:
            vm.host.might_reclaim()  # the new array is allocated with slots_lock held
        if vm.hazards.memslot_update_locks_vcpus and change == CREATE:
            for vcpu in vm.vcpus:  # broken: vcpu->mutex is ordered outside slots_lock
                with vcpu.mutex:
                    pass
        dropped = old is not None and old.dirty_bitmap is not None and \
            (new is None or new.dirty_bitmap is not old.dirty_bitmap)
        if dropped and BITMAP_FREED_BEFORE_SWAP in vm.hazards:
            old.dirty_bitmap.free()  # broken: vCPUs may still reach it through the old array
        _set_memslot(vm, old, new, change)
        # kvm_commit_memory_region / kvm_free_memslot: a bitmap the new slot does not carry
        # goes, after the grace period the swap waited for
        if dropped and BITMAP_FREED_BEFORE_SWAP not in vm.hazards:
            old.dirty_bitmap.free()
    return change


def _set_memslot(vm: VM, old: Memslot | None, new: Memslot | None, change: str) -> None:
    from kvmlock.kvm.mmu.dirty_log import slot_remove_write_access
    from kvmlock.kvm.mmu.tdp_mmu import flush_shadow_memslot

    logging_on = new is not None and new.logging and not (
        old is not None and old.logging and change == FLAGS_ONLY)
    wrprot_early = logging_on and LOGGING_WRPROT_BEFORE_SWAP in vm.hazards
    if wrprot_early:
        assert new is not None
        slot_remove_write_access(vm, new)  # broken: faults still see the slot unlogged
    # broken when sampled here: the first shadow root may allocate rmaps before the lock
    early_root = vm.shadow_root_allocated.load() \
        if ROOTS_SAMPLED_BEFORE_SLOTS_ARCH_LOCK in vm.hazards else None
    vm.slots_arch_lock.lock()
    cur = active_memslots(vm)
    if new is not None and change == CREATE:
        if vm.hazards.memslot_commit_locks_vcpus:
            for vcpu in vm.vcpus:  # broken: vcpu->mutex is ordered outside slots_arch_lock
                with vcpu.mutex:
                    pass
    if change in (DELETE, MOVE):
        assert old is not None
        if DELETE_ZAPS_BEFORE_SYNC in vm.hazards:
            # broken: a fault that loaded the old array can still install an SPTE after this
            flush_shadow_memslot(vm, old)
        _swap_active_memslots(vm, cur.with_slot(replace(old, invalid=True)))
        vm.slots_arch_lock.lock()
        cur = active_memslots(vm)
        if DELETE_ZAPS_BEFORE_SYNC not in vm.hazards and \
                not (change == MOVE and MOVE_KEEPS_OLD_SPTES in vm.hazards):
            flush_shadow_memslot(vm, old)
    # kvm_arch_prepare_memory_region: a created or moved slot gets fresh metadata (a moved
    # slot's rmaps are indexed by its new gfns), so once a shadow root exists it needs its
    # rmaps before it is published; slots_arch_lock keeps the first root's allocation out
    fresh = (CREATE,) if MOVED_SLOT_WITHOUT_RMAPS in vm.hazards else (CREATE, MOVE)
    rooted = vm.shadow_root_allocated.load() if early_root is None else early_root
    if new is not None and change in fresh and rooted:
        new.arch.alloc_rmaps()
    final = cur.with_slot(new, drop=old.id if old is not None else None)
    early = change in (DELETE, MOVE) and ARCH_FREE_BEFORE_FINAL_SWAP in vm.hazards
    if early:
        assert old is not None
        old.arch.free()  # broken: the published invalid copy still carries it
    _swap_active_memslots(vm, final)
    if change in (DELETE, MOVE) and not early:
        assert old is not None
        old.arch.free()  # kvm_arch_free_memslot: after the grace period the swap waited for
    # commit: turning dirty logging on write-protects the slot so the next write is seen;
    # only now does every fault find logging on (kvm_mmu_slot_apply_flags)
    if logging_on and not wrprot_early:
        assert new is not None
        slot_remove_write_access(vm, new)
