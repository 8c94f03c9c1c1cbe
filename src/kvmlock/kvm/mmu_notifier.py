"""KVM's MMU notifier: how the host's unmapping of guest memory reaches the SPTEs.

``invalidate_range_start`` (facts from kvm_main.c, own code):

1. count the invalidation as active (``mn_active_invalidate_count``, under
   ``kvm->mn_invalidate_lock``) -- a memslot update waits for the count to drop to zero;
2. inside ``kvm->srcu``'s read side, find the memslots overlapping the range; only if there is
   one, take ``mmu_lock`` for write, begin an invalidation (``mmu_invalidate_in_progress`` and
   the range, which make concurrent slow faults retry) and zap the SPTEs, flushing TLBs.

``invalidate_range_end`` walks the same memslots again, ends the invalidation (bumping
``mmu_invalidate_seq``) and drops the active count, waking the memslot updater at zero.

Start and end must see the same memslots array, or the in-progress count would be left
unbalanced; the model checks that for every pair. The notifier never takes ``slots_lock`` or
``slots_arch_lock``: the memslot updater holds them while it waits for this path to finish.

``release`` is the last call the notifier gets: the host's address space is torn down and
its pages freed with no invalidation, so every SPTE -- of an invalidated TDP root too -- is
gone (``kvm_mmu_zap_all``) before it returns.

An invalidation may be *non-blockable* (``blockable=False``: the OOM reaper unmapping a dying
task's memory must not wait for anything that could need memory): then both halves run in a
``kvmlock.irq.nonblocking()`` section, where sleeping is a bug. That is why every lock on this
path spins -- ``mn_invalidate_lock`` is a spinlock_t and ``mmu_lock`` an rwlock_t -- and why
the SRCU read side, which never sleeps, is the only protection of the memslots here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmlock import irq, runtime
from kvmlock.kvm.memslots import NOTIFIER_USES_RWSEM, _notifier_rwsem
from kvmlock.kvm.mmu.access_track import age_gfn_range
from kvmlock.kvm.mmu.shadow import unmap_gfn_range
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mutants import mutant, unless

if TYPE_CHECKING:
    from kvmlock.kvm.memslots import Memslot, Memslots
    from kvmlock.kvm.vm import VM

__all__ = ["KvmMmuNotifier"]

#: a range handler returns (its verdict, whether TLBs must be flushed for what it did)
Handler = Callable[["VM", "Memslot", int, int], tuple[bool, bool]]

NOTIFIER_TAKES_SLOTS_LOCK = mutant(
    "notifier_takes_slots_lock", removes="(adds) kvm->slots_lock taken by the MMU notifier",
    breaks="MMU notifiers must not take slots_lock or slots_arch_lock")
NOTIFIER_TAKES_SLOTS_ARCH_LOCK = mutant(
    "notifier_takes_slots_arch_lock", removes="(adds) slots_arch_lock taken by "
    "invalidate_range_start under mn_invalidate_lock",
    breaks="MMU notifiers must not take slots_lock or slots_arch_lock")
NOTIFIER_NO_ZAP = mutant(
    "notifier_no_zap", removes="the zap of SPTEs in invalidate_range_start",
    breaks="KVM drops its mappings of a host page before the host frees it")
NOTIFIER_NO_FLUSH = mutant(
    "notifier_no_flush", removes="the TLB flush after invalidate_range_start zapped SPTEs",
    breaks="invalidate: no vCPU keeps a translation to a page the host is about to free")
NOTIFIER_FLUSH_AFTER_UNLOCK = mutant(
    "notifier_flush_after_unlock", removes="the MMU notifier's TLB flush before mmu_lock is "
    "released (kvm_handle_hva_range flushing after write_unlock instead)",
    breaks="once mmu_lock is dropped with the SPTE gone, a concurrent invalidation of the "
           "same page finds nothing to zap or flush, and the host frees the frame a vCPU's "
           "TLB still maps")
NOTIFIER_FLUSH_LAST_SLOT = mutant(
    "notifier_flush_last_slot", removes="the MMU notifier's flush decision gathered over "
    "every memslot the range meets (only the last one's counts)",
    breaks="invalidate: two memslots may alias one hva; a zap in any of them flushes TLBs "
           "before the host frees the page")
NOTIFIER_READ_LOCK = mutant(
    "notifier_read_lock", removes="write mode of mmu_lock in the MMU notifier (read instead)",
    breaks="invalidation state (mmu_invalidate_in_progress) and zaps change under mmu_lock "
           "held for write")
MN_COUNT_WITHOUT_LOCK = mutant(
    "mn_count_without_lock", removes="kvm->mn_invalidate_lock around mn_active_invalidate_count",
    breaks="mn_active_invalidate_count is changed only under mn_invalidate_lock")
NOTIFIER_NO_WAKEUP = mutant(
    "notifier_no_wakeup", removes="the rcuwait wake-up when the last invalidation ends",
    breaks="the memslot updater sleeping on mn_memslots_update_rcuwait is woken at zero")
RANGE_NOT_WIDENED = mutant(
    "range_not_widened", removes="widening the invalidated range to cover every active "
    "invalidation (a nested one keeps only the first's range)",
    breaks="a fault on any page of an active invalidation retries, however many are active")
NOTIFIER_SRCU_AROUND_LOOKUP_ONLY = mutant(
    "notifier_srcu_around_lookup_only", removes="the kvm->srcu read side across the MMU "
    "notifier's memslot walk and its handlers (held only around loading the memslots pointer)",
    breaks="kvm->srcu: what a reader dereferenced is used only inside its read side -- aging "
           "has no mn_active_invalidate_count fence, so only SRCU keeps a memslot update from "
           "freeing the array it walks")
END_UNCOUNTS_BEFORE_WALK = mutant(
    "end_uncounts_before_walk", removes="invalidate_range_end's memslot walk inside the "
    "active count (the count dropped, and the updater woken, before the walk)",
    breaks="mn_active_invalidate_count covers an invalidation from the start of its first "
           "memslot walk to the end of its second, so both see the same memslots")
NO_SEQ_BUMP = mutant(
    "no_seq_bump", removes="the mmu_invalidate_seq increment in invalidate_range_end",
    breaks="a fault that began before an invalidation sees the sequence move and retries")


def _add(obj: object, field: str, delta: int) -> int:
    """``obj.field += delta`` as the load and store it is: returns the new value.

    Two visible steps, so a path that forgets its lock can lose an update, as C would.
    """
    rt = runtime.active()
    rt.point(obj, f"read {field}", False)
    n = getattr(obj, field) + delta
    rt.point(obj, f"write {field}", True)
    setattr(obj, field, n)
    return n


class KvmMmuNotifier:
    """The notifier a VM registers with its host."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    # ------------------------------------------------------------ the range walk

    def _handle_range(
        self,
        start: int,
        end: int,
        on_lock: Callable[[], None] | None,
        handler: Handler | None,
    ) -> tuple[Memslots, bool]:
        """``kvm_handle_hva_range``: returns the memslots seen and the handlers' verdict."""
        vm = self.vm
        idx: int | None = vm.srcu.read_lock()
        try:
            slots: Memslots = vm.memslots.srcu_dereference(vm.srcu)
            if NOTIFIER_SRCU_AROUND_LOOKUP_ONLY in vm.hazards:
                vm.srcu.read_unlock(idx)  # broken: the walk below still uses the array
                idx = None
            locked = False
            ret = flush = False
            late = NOTIFIER_FLUSH_AFTER_UNLOCK in vm.hazards
            last_slot_only = NOTIFIER_FLUSH_LAST_SLOT in vm.hazards
            try:
                read = NOTIFIER_READ_LOCK in vm.hazards
                for slot, gstart, gend in slots.overlapping(start, end):
                    slots.live()  # each step of the walk reads the array's hva tree
                    if not locked:
                        if read:
                            vm.mmu_lock.read_lock()
                        else:
                            vm.mmu_lock.write_lock()
                        locked = True
                        if on_lock is not None:
                            on_lock()
                    if handler is not None:
                        r, f = handler(vm, slot, gstart, gend)
                        ret |= r
                        flush = f if last_slot_only else flush or f
                if flush and not late:
                    flush_remote_tlbs(vm)
            finally:
                if locked and read:
                    vm.mmu_lock.read_unlock()
                elif locked:
                    vm.mmu_lock.write_unlock()
            if flush and late:
                flush_remote_tlbs(vm)  # broken: the SPTE is gone, the translation is not yet
            return slots, ret
        finally:
            if idx is not None:
                vm.srcu.read_unlock(idx)

    # ------------------------------------------------------------ invalidate

    def invalidate_range_start(self, start: int, end: int, blockable: bool = True) -> Memslots:
        with _context(blockable):
            return self._start(start, end)

    def invalidate_range_end(self, start: int, end: int, token: Memslots,
                             blockable: bool = True) -> None:
        with _context(blockable):
            self._end(start, end, token)

    def _start(self, start: int, end: int) -> Memslots:
        vm = self.vm
        if NOTIFIER_USES_RWSEM in vm.hazards:
            _notifier_rwsem(vm).down_read()
        else:
            with unless(MN_COUNT_WITHOUT_LOCK, vm.hazards, vm.mn_invalidate_lock):
                if NOTIFIER_TAKES_SLOTS_ARCH_LOCK in vm.hazards:
                    with vm.slots_arch_lock:  # forbidden, and a mutex inside a spinlock
                        pass
                _add(vm, "mn_active_invalidate_count", 1)
        if NOTIFIER_TAKES_SLOTS_LOCK in vm.hazards:
            with vm.slots_lock:  # forbidden: see the module docstring
                pass

        def begin() -> None:
            if _add(vm, "mmu_invalidate_in_progress", 1) == 1:
                vm.mmu_invalidate_range_start, vm.mmu_invalidate_range_end = start, end
            elif RANGE_NOT_WIDENED not in vm.hazards:
                vm.mmu_invalidate_range_start = min(vm.mmu_invalidate_range_start, start)
                vm.mmu_invalidate_range_end = max(vm.mmu_invalidate_range_end, end)

        zap = None if NOTIFIER_NO_ZAP in vm.hazards else _unmap
        slots, _ = self._handle_range(start, end, begin, zap)
        vm.stats["invalidations"] += 1
        return slots

    def _end(self, start: int, end: int, token: Memslots) -> None:
        vm = self.vm

        def finish() -> None:
            if NO_SEQ_BUMP not in vm.hazards:
                vm.mmu_invalidate_seq.fetch_add(1)
            assert _add(vm, "mmu_invalidate_in_progress", -1) >= 0, (
                "mmu_invalidate_in_progress went negative: an invalidate_range_end found a "
                "memslot its _start did not")

        early = END_UNCOUNTS_BEFORE_WALK in vm.hazards
        if early:
            self._uncount()  # broken: a memslot update may swap before the walk below
        slots, _ = self._handle_range(start, end, finish, None)
        with vm.invalidate_wq:
            vm.invalidate_wq.notify_all()
        assert slots is token, (
            f"invalidate_range_start saw {token!r} but invalidate_range_end saw {slots!r}: the "
            "memslots changed in the middle of an invalidation")
        if not early:
            self._uncount()

    def _uncount(self) -> None:
        """This invalidation is no longer active: the last one out wakes the memslot updater."""
        vm = self.vm
        if NOTIFIER_USES_RWSEM in vm.hazards:
            _notifier_rwsem(vm).up_read()
            return
        with unless(MN_COUNT_WITHOUT_LOCK, vm.hazards, vm.mn_invalidate_lock):
            left = _add(vm, "mn_active_invalidate_count", -1)
            assert left >= 0, "mn_active_invalidate_count underflow"
        if left == 0 and NOTIFIER_NO_WAKEUP not in vm.hazards:
            vm.mn_memslots_update_rcuwait.wake_up()

    # ------------------------------------------------------------ release

    def release(self) -> None:
        """``kvm_mmu_notifier_release``: the host's address space is going away and this is
        the last the notifier hears of it, so every SPTE goes now (``kvm_flush_shadow_all``,
        inside ``kvm->srcu``'s read side): the host frees the pages right after, unannounced."""
        vm = self.vm
        with vm.srcu.read():
            vm.mmu.zap_all()

    # ------------------------------------------------------------ aging

    def clear_flush_young(self, start: int, end: int) -> bool:
        """Age the range's SPTEs; flush only if aging took W away (see
        :func:`~kvmlock.kvm.mmu.access_track.age_gfn_range`: clearing Accessed alone needs
        no flush, and x86 KVM elides this notifier's flush altogether)."""
        _, young = self._handle_range(start, end, None, _age)
        return young


def _context(blockable: bool) -> Any:
    """Where an invalidation runs: anywhere, or (``blockable=False``) where it may not sleep."""
    return contextlib.nullcontext() if blockable else irq.nonblocking()


def _slot_rmaps(vm: VM, slot: Memslot) -> None:
    """``kvm_memslots_have_rmaps``: once a shadow root exists, the handlers walk the slot's
    own rmaps (``slot->arch.rmap``) -- of an invalid slot being deleted too -- so its arch
    data must still be live (a visible read: its free races this walk)."""
    if vm.shadow_root_allocated.load():
        slot.arch.rmaps  # noqa: B018 - the read is the use


def _unmap(vm: VM, slot: Memslot, gstart: int, gend: int) -> tuple[bool, bool]:
    _slot_rmaps(vm, slot)
    zapped = unmap_gfn_range(vm, gstart, gend)
    return zapped, zapped and NOTIFIER_NO_FLUSH not in vm.hazards


def _age(vm: VM, slot: Memslot, gstart: int, gend: int) -> tuple[bool, bool]:
    _slot_rmaps(vm, slot)
    return age_gfn_range(vm, gstart, gend)
