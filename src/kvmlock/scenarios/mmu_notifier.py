"""MMU notifier vs memslot update (locking.rst: ``mn_active_invalidate_count``,
``mn_memslots_update_rcuwait``; "MMU notifiers must not take slots_lock or slots_arch_lock").

Each invalidate_range_start and its _end must see the same memslots array. The design fences
memslot updates with an open-coded count plus an rcuwait: the updater, holding ``slots_lock``
and ``slots_arch_lock``, sleeps until no invalidation is active.

* ``mmu_notifier.memslot_update.correct`` -- swap-out (with a nested reclaim inside its
  invalidation) races a memslot update; start/end always agree, nothing deadlocks.
* ``mmu_notifier.no_wait.broken`` -- the updater does not wait: an invalidation's _end sees a
  different array than its _start (assertion in the notifier).
* ``mmu_notifier.rwsem.broken`` -- the historical fence, an rwsem read-held from start to end:
  a reclaim nested inside an invalidation takes the read side again, behind a waiting writer.
  lockdep reports the cycle through the notifier's pseudo-lock, as the kernel did.
* ``mmu_notifier.slots_lock.broken`` -- the notifier takes ``slots_lock``, which the updater
  holds while it waits for that very notifier: lockdep reports the cycle.
* ``mmu_notifier.two_invalidations_vs_update.correct`` / ``.recheck_once.broken`` -- two
  swap-outs race the update. The updater sleeps until a wake-up, not until the count is zero:
  woken when the first invalidation ends, it must re-read the count under the lock, because
  the second may have started meanwhile (its ``while`` made an ``if`` swaps under it).
* ``mmu_notifier.flush_under_mmu_lock.correct`` / ``.broken`` -- two threads discard one page
  (``MADV_DONTNEED``, no page lock) while a vCPU reads it through its TLB. The first
  invalidation zaps the SPTE and must flush before it drops ``mmu_lock``: the second finds
  nothing to zap, so nothing to flush, and frees the frame as soon as it has cleared the PTE.
* ``mmu_notifier.aliased_slots`` -- two memslots map one hva; swap-out zaps the SPTE in the
  first and finds nothing in the second. The flush is owed for any slot's zap, not the last's.
* ``page_fault.vs_ended_invalidation`` -- the swap-out of the faulting vCPU's page ends, and
  one of another page begins, before the fault takes ``mmu_lock``: only the sequence says the
  fault's frame is gone, so it is compared whatever invalidation is in progress.
"""

from __future__ import annotations

import kvmlock
from kvmlock.kvm.guest import guest_read, guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}


def _notifier_vs_update(hazard: str | None, *, nested: bool) -> None:
    # Two frames for two hvas: swap-out finds no free frame and reclaims the other page
    # inside its own invalidation (when ``nested``).
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2,
            hazards={hazard: True} if hazard else None)
    vm.host.reclaim_nested = nested
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)
    guest_write(v0, 1, 2)

    def swapper() -> None:
        vm.host.swap_out(0)

    def memslot_updater() -> None:
        vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)

    tasks = [kvmlock.spawn(swapper, name="swapper"),
             kvmlock.spawn(memslot_updater, name="memslot_updater")]
    for t in tasks:
        t.join()
    vm.check()


_INV = "invalidate start and end see the same memslots; updates wait for active invalidations"


@scenario("mmu_notifier.memslot_update.correct",
          rule="memslot update waits for active invalidations (count + rcuwait)",
          variant="correct", expect="pass", invariant=_INV,
          catches=("swap_without_waiting", "notifier_uses_rwsem", "notifier_takes_slots_lock",
                   "notifier_no_wakeup", "end_uncounts_before_walk",
                   "memslots_published_after_unlock"), **_BOUND)
def notifier_correct() -> None:
    _notifier_vs_update(None, nested=True)


@scenario("mmu_notifier.no_wait.broken",
          rule="memslot update swaps the array while an invalidation is active",
          variant="broken", expect="assertion", invariant=_INV, **_BOUND)
def notifier_no_wait() -> None:
    _notifier_vs_update("swap_without_waiting", nested=False)


@scenario("mmu_notifier.rwsem.broken",
          rule="an rwsem held from invalidate start to end fences memslot updates",
          variant="broken", expect="lockdep", lockdep_kind="circular", invariant=_INV, **_BOUND)
def notifier_rwsem() -> None:
    _notifier_vs_update("notifier_uses_rwsem", nested=True)


@scenario("mmu_notifier.slots_lock.broken",
          rule="MMU notifier takes kvm->slots_lock (the updater holds it while waiting)",
          variant="broken", expect="lockdep", lockdep_kind="circular",
          invariant="the MMU notifier path takes neither slots_lock nor slots_arch_lock",
          **_BOUND)
def notifier_slots_lock() -> None:
    _notifier_vs_update("notifier_takes_slots_lock", nested=False)


# The same two designs with lockdep switched off: the explorer must then find the deadlock
# itself, as a hung machine would. With the rwsem, the reclaim nested in the swapper's
# invalidation blocks on the read side behind the waiting updater, which waits for the
# swapper's first read. With slots_lock, the notifier (already counted active) blocks on the
# lock the updater holds while it sleeps until no invalidation is active.


@scenario("mmu_notifier.rwsem.deadlock.broken",
          rule="the rwsem fence deadlocks: nested reader behind a waiting memslot writer",
          variant="broken", expect="deadlock", invariant=_INV, lockdep=False, **_BOUND)
def notifier_rwsem_deadlock() -> None:
    _notifier_vs_update("notifier_uses_rwsem", nested=True)


@scenario("mmu_notifier.slots_lock.deadlock.broken",
          rule="a notifier taking slots_lock deadlocks with the waiting memslot updater",
          variant="broken", expect="deadlock",
          invariant="the MMU notifier path takes neither slots_lock nor slots_arch_lock",
          lockdep=False, **_BOUND)
def notifier_slots_lock_deadlock() -> None:
    _notifier_vs_update("notifier_takes_slots_lock", nested=False)


# Scale and the slow path's retry protocol.


@scenario("mmu_notifier.two_invalidations_vs_update.correct",
          rule="two invalidations (swap-outs of two pages) racing a memslot update",
          variant="correct", expect="pass",
          invariant=_INV + "; the invalidation counters come back to zero (no lost update)",
          catches=("mn_count_without_lock", "notifier_read_lock", "swap_recheck_once"),
          strategy="dpor", max_runs=20000, preemption_bound=2)
def two_invalidations_vs_update() -> None:
    _two_invalidations(None)


@scenario("mmu_notifier.recheck_once.broken",
          rule="the memslot update, woken at zero, swaps without re-reading the count: an "
               "invalidation that started after the wake-up is still active",
          variant="broken", expect="assertion", invariant=_INV,
          strategy="dpor", max_runs=20000, preemption_bound=2)
def two_invalidations_recheck_once() -> None:
    _two_invalidations("swap_recheck_once")


def _two_invalidations(hazard: str | None) -> None:
    vm = VM(nr_vcpus=1, nr_pages=3, host_pages=3, hazards={hazard: True} if hazard else None)
    vm.host.reclaim_nested = False
    vm.set_memory_region(0, base_gfn=0, npages=3, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)
    guest_write(v0, 1, 2)
    tasks = [kvmlock.spawn(lambda: vm.host.swap_out(0), name="swap_out(0)"),
             kvmlock.spawn(lambda: vm.host.swap_out(1), name="swap_out(1)"),
             kvmlock.spawn(lambda: vm.set_memory_region(0, base_gfn=0, npages=3, hva=0,
                                                        flags=LOG_DIRTY_PAGES),
                           name="memslot_updater")]
    for t in tasks:
        t.join()
    vm.check()
    assert (guest_read(v0, 0), guest_read(v0, 1)) == (1, 2), "swap-out lost guest data"


@scenario("mmu_notifier.age_vs_memslot_update.correct",
          rule="aging (clear_flush_young) walks the memslots inside kvm->srcu's read side: it "
               "takes no mn_active_invalidate_count, so a memslot update does not wait for it "
               "and frees the old array after a grace period",
          variant="correct", expect="pass",
          invariant="no memslots array is used after it was freed; every present SPTE maps "
                    "the host's frame in a live memslot",
          catches=("notifier_srcu_around_lookup_only",), **_BOUND)
def age_vs_memslot_update() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    guest_read(vm.vcpus[0], 0)

    def host_ages() -> None:
        vm.host.age(0)  # young or not, by the order: either answer is the kernel's too

    def memslot_deleter() -> None:
        vm.set_memory_region(0, npages=0)

    tasks = [kvmlock.spawn(host_ages, name="host_ages"),
             kvmlock.spawn(memslot_deleter, name="memslot_deleter")]
    for t in tasks:
        t.join()
    vm.check()


@scenario("page_fault.vs_invalidate.correct",
          rule="a slow fault racing swap-out of its page retries (mmu_invalidate_seq / "
               "in_progress), sampling the sequence before looking the page up",
          variant="correct", expect="pass",
          invariant="every present SPTE maps the host's current frame; no access to a freed "
                    "frame; the write survives swap-out",
          catches=("no_invalidate_retry", "no_in_progress_check", "seq_after_fault_in",
                   "no_seq_bump", "notifier_no_flush", "tdp_fault_stale_check_unlocked"),
          **_BOUND)
def fault_vs_invalidate() -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.host.gup_fast = True  # the page can be found while it is being unmapped
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    vm.host.fault_in(0)  # mapped by the host, not yet by KVM: the vCPU takes the slow path
    tasks = [kvmlock.spawn(lambda: guest_write(v0, 0, 5), name="vcpu0_writes"),
             kvmlock.spawn(lambda: vm.host.swap_out(0), name="swapper")]
    for t in tasks:
        t.join()
    vm.check()
    got = guest_read(v0, 0)
    assert got == 5, f"the guest wrote 5 but reads {got:#x} after swap-out"


@scenario("page_fault.vs_two_invalidations.correct",
          rule="a slow fault retries while any invalidation covering its page is active: with "
               "two active, the in-progress range covers both",
          variant="correct", expect="pass",
          invariant="every present SPTE maps the host's current frame; no access to a freed "
                    "frame; the write survives both swap-outs",
          catches=("range_not_widened",), strategy="dpor", max_runs=20000, preemption_bound=2)
def fault_vs_two_invalidations() -> None:
    # swap-out of page 0 is active when the vCPU looks page 1 up; swap-out of page 1 starts
    # before the fault takes mmu_lock. Only the widened range makes the fault retry: the
    # sequence has not moved yet, and page 1 is outside the first invalidation's range.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)
    vm.host.fault_in(1)  # mapped by the host, not yet by KVM: the vCPU takes the slow path
    tasks = [kvmlock.spawn(lambda: vm.host.swap_out(0), name="swap_out(0)"),
             kvmlock.spawn(lambda: guest_write(v0, 1, 5), name="vcpu0_writes"),
             kvmlock.spawn(lambda: vm.host.swap_out(1), name="swap_out(1)")]
    for t in tasks:
        t.join()
    vm.check()
    got = (guest_read(v0, 0), guest_read(v0, 1))
    assert got == (1, 5), f"the guest wrote (1, 5) but reads {got} after the swap-outs"


@pair("page_fault.vs_ended_invalidation",
      rule="a slow fault compares mmu_invalidate_seq even while an invalidation of another "
           "page is in progress: its own page's invalidation may have ended already",
      broken_rule="while any invalidation is in progress only its range decides: the fault "
                  "whose page was swapped out meanwhile installs the frame the host freed",
      broken_expect="assertion", catches=("seq_unchecked_in_progress",),
      invariant="every present SPTE maps the host's current frame; no access to a freed "
                "frame; the write survives the swap-outs",
      strategy="dpor", max_runs=20000, preemption_bound=2)
def fault_vs_ended_invalidation(broken: bool) -> None:
    # The vCPU found page 1's frame; swap-out of page 1 then runs to its end (the sequence
    # moves) and swap-out of page 0 begins before the fault takes mmu_lock.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3,
            hazards={"seq_unchecked_in_progress": broken})
    vm.host.reclaim_nested = False
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)
    vm.host.fault_in(1)  # mapped by the host, not yet by KVM: the vCPU takes the slow path

    def reclaim() -> None:
        vm.host.swap_out(1)
        vm.host.swap_out(0)

    together(lambda: guest_write(v0, 1, 5), reclaim, names=["vcpu0_writes", "reclaim"])
    vm.check()
    got = (guest_read(v0, 0), guest_read(v0, 1))
    assert got == (1, 5), f"the guest wrote (1, 5) but reads {got} after the swap-outs"


def _flush_vs_discards(hazard: str | None) -> None:
    # Page 0 (gfn 0 -> hva 0) was written, so vcpu0's TLB caches it writable. vcpu0 reads it
    # again while two threads discard hva 0: whichever clears the host PTE frees the frame.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, hazards={hazard} if hazard else None)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 5)
    got: list[int] = []
    together(lambda: got.append(guest_read(v0, 0)), lambda: vm.host.discard(0),
             lambda: vm.host.discard(0),
             names=["vcpu0 reads page 0", "MADV_DONTNEED thread 1", "MADV_DONTNEED thread 2"])
    vm.check()
    assert got[0] in (5, 0), f"vcpu0 read {got[0]} from page 0: neither 5 nor a fresh page"


_FLUSH_INV = ("no vCPU reads a frame the host freed: an invalidation that zapped an SPTE "
              "flushes TLBs before another one can see the SPTE gone")
#: one preemption is enough for the late flush's window: the first invalidation preempted
#: between its unlock and its flush, the second run to the free, then the vCPU (59 executions)
_FLUSH_BOUND = {"strategy": "dpor", "preemption_bound": 1}


@scenario("mmu_notifier.flush_under_mmu_lock.correct",
          rule="the MMU notifier flushes TLBs for what it zapped before it releases mmu_lock, "
               "so a concurrent invalidation that finds the SPTE gone may free the frame",
          variant="correct", expect="pass", invariant=_FLUSH_INV,
          catches=("notifier_flush_after_unlock", "notifier_no_flush", "notifier_no_zap"),
          **_FLUSH_BOUND)
def flush_under_mmu_lock() -> None:
    _flush_vs_discards(None)


@scenario("mmu_notifier.flush_under_mmu_lock.broken",
          rule="the MMU notifier flushes after releasing mmu_lock: in between, a second "
               "invalidation of the page finds no SPTE, flushes nothing and frees the frame, "
               "and the vCPU reads it through the translation its TLB still holds",
          variant="broken", expect="assertion", invariant=_FLUSH_INV, **_FLUSH_BOUND)
def flush_after_unlock() -> None:
    _flush_vs_discards("notifier_flush_after_unlock")


@pair("mmu_notifier.aliased_slots",
      rule="an invalidation flushes TLBs if it zapped an SPTE in any memslot its range meets: "
           "two memslots may map one hva",
      broken_rule="the flush decided by the last memslot the range meets: the zap in the "
                  "first aliasing slot is not flushed, and the host frees a frame a vCPU's "
                  "TLB still maps",
      broken_expect="assertion", catches=("notifier_flush_last_slot",),
      invariant="no vCPU reads a frame the host freed", strategy="dpor")
def aliased_slots(broken: bool) -> None:
    # Slots 0 and 1 both map hva 0 (at gfns 0 and 2). The vCPU cached gfn 0's translation and
    # reads it again while hva 0 is swapped out: the swap-out zaps the SPTE in slot 0 and
    # finds nothing mapped in slot 1.
    vm = VM(nr_vcpus=1, nr_pages=4, host_pages=2,
            hazards={"notifier_flush_last_slot": broken})
    vm.host.reclaim_nested = False
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    vm.set_memory_region(1, base_gfn=2, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 5)
    got: list[int] = []
    together(lambda: got.append(guest_read(v0, 0)), lambda: vm.host.swap_out(0),
             names=["vcpu0 reads page 0", "swap-out of hva 0"])
    got.append(guest_read(v0, 0))
    vm.check()
    assert got == [5, 5], f"the guest wrote 5 to page 0 but reads {got} around swap-out"
