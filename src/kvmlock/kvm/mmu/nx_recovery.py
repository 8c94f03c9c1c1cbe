"""NX huge-page recovery: a TDP MMU writer of present SPTEs under *read-mode* ``mmu_lock``.

With the NX huge-page mitigation, an instruction fetch from a huge mapping makes KVM map that
region with a page table of small pages instead. A kernel thread later zaps some of those
tables (``kvm_recover_nx_huge_pages``) so the region can be mapped huge again; newer kernels do
the TDP MMU part with ``mmu_lock`` held for *read*, beside faulting vCPUs. The model maps no
huge pages, so after recovery the next fault simply builds the table again; what it keeps is
the protocol that lets the removal run under read mode (facts from arch/x86/kvm/mmu/mmu.c and
tdp_mmu.c, in the model's own code):

* the table is taken from the page list under ``tdp_mmu_pages_lock`` (the kernel's list of
  possible NX huge pages), whichever root it hangs in;
* the entry pointing at the table is cleared with a cmpxchg (``tdp_mmu_set_spte_atomic``), and
  only if it still points at that table: the fast zap of invalidated roots
  (:mod:`kvmlock.kvm.mmu.tdp_mmu`) clears such entries under read mode too, and exactly one of
  the two may remove the table;
* every SPTE of the removed table is then *frozen* with an exchange (``handle_removed_pt``):
  until the table's entry is cleared and TLBs flushed, the CPU may still set Dirty in an SPTE,
  the fast path may still make one writable and a fault that walked in before may still
  install one -- the exchange returns whatever is there, and its Accessed/Dirty reach the page;
* TLBs are flushed before the lock is dropped, and the table is freed only after an RCU grace
  period (``call_rcu``), when no lockless walker can still be inside it;
* all of it, from taking the table off the list to the flush, runs inside an RCU read side of
  its own, taken just after ``mmu_lock``: read-mode ``mmu_lock`` does not keep out the other
  read-mode remover, the fast zap of invalidated roots, which may take the same table out and
  free it after a grace period -- only the read side makes that grace period wait until
  recovery no longer reads the table (the entry above it, its SPTEs).

Read-mode writers change SPTEs only atomically. Writers that hold ``mmu_lock`` for write may use
plain stores on SPTEs only the CPU and the fast path could change, and walk tables without an
RCU read side, because write mode keeps every read-mode writer -- this one included -- out.
That is what the dirty-log harvest relies on (mutant ``harvest_read_lock``). The kernel's
harvest walks inside an RCU read side anyway, as every TDP MMU walk does; in the model only the
lockless walkers are RCU readers.

The kernel skips tables of memslots it sees with dirty logging on (they would only be split
again), but that test is a heuristic, not a lock: the count it reads is raised only when the
memslot update that turned logging on commits, after the new memslots are in use, so recovery
can still be removing tables of a logged slot when the first harvests run. The model's recovery
does not test it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

from kvmlock.kvm.mmu.shadow import SP_ENTRIES, grace_period
from kvmlock.kvm.mmu.tdp_mmu import free_tables, handle_removed_table
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.vm import VM

__all__ = ["recover_nx_huge_page"]

RECOVER_PARENT_LOAD_STORE = mutant(
    "recover_parent_load_store", removes="the cmpxchg with which NX huge-page recovery clears "
    "the entry pointing at the table it removes (load, compare, then store)",
    breaks="under read-mode mmu_lock a non-leaf entry changes only atomically: exactly one "
           "remover -- NX huge-page recovery or the fast zap of invalidated roots -- takes a "
           "table out and tears it down")
RECOVER_FREEZE_PLAIN_STORE = mutant(
    "recover_freeze_plain_store", removes="the exchange that freezes each SPTE of a table NX "
    "huge-page recovery removes (load, then store of the frozen value)",
    breaks="under read-mode mmu_lock SPTEs change only atomically: a Dirty bit the CPU sets "
           "(or an SPTE a racing fault installs) in a removed table reaches the page")
RECOVER_NO_FLUSH = mutant(
    "recover_no_flush", removes="the TLB flush before NX huge-page recovery drops mmu_lock",
    breaks="a removed table's translations are flushed before anything may rely on their "
           "absence: a later zap finds no SPTE and flushes nothing, and the host frees a "
           "frame a vCPU's TLB still maps")
RECOVER_FLUSH_AFTER_UNLOCK = mutant(
    "recover_flush_after_unlock", removes="NX huge-page recovery's TLB flush before it drops "
    "mmu_lock (the flush done after read_unlock instead)",
    breaks="once mmu_lock is dropped with the table unlinked, an invalidation of one of its "
           "gfns finds no SPTE, flushes nothing and lets the host free a frame a vCPU's TLB "
           "still maps")
RECOVER_FREE_NO_GRACE_PERIOD = mutant(
    "recover_free_no_grace_period", removes="the RCU grace period before a table NX "
    "huge-page recovery removed is freed (freed at once, not by call_rcu)",
    breaks="a shadow page is freed only after every lockless walker that may use it is done")


RECOVER_WITHOUT_RCU = mutant(
    "recover_without_rcu", removes="the RCU read side NX huge-page recovery holds from taking "
    "a table off the list until it has removed it and flushed (read-mode mmu_lock only)",
    breaks="TDP MMU tables are freed after an RCU grace period, and read-mode mmu_lock does not "
           "keep out the fast zap of invalidated roots: it removes and frees the table "
           "recovery found, which then reads a freed table")


def recover_nx_huge_page(vm: VM, va: int) -> bool:
    """Zap the TDP page table that maps guest page ``va``, under read-mode ``mmu_lock``; True
    if one was removed (and freed)."""
    mmu = vm.mmu
    if not mmu.tdp_mmu:
        raise ValueError("recover_nx_huge_page: the shadow MMU recovers under write-mode "
                         "mmu_lock; the model recovers TDP MMU tables only")
    mmu.check_va(va)
    plain = RECOVER_PARENT_LOAD_STORE in vm.hazards
    flush = RECOVER_NO_FLUSH not in vm.hazards
    late = RECOVER_FLUSH_AFTER_UNLOCK in vm.hazards
    # (broken without it: a fast zap may free the table found while recovery still reads it)
    reader = nullcontext() if RECOVER_WITHOUT_RCU in vm.hazards else mmu.rcu.read()
    with vm.mmu_lock.read(), reader:
        table = _possible_nx_huge_page(vm, va)
        if table is None or not mmu.clear_parent(table, plain=plain):
            return False
        handle_removed_table(vm, table, "NX huge-page recovery",
                             plain_freeze=RECOVER_FREEZE_PLAIN_STORE in vm.hazards)
        if flush and not late:
            flush_remote_tlbs(vm)
    if flush and late:
        flush_remote_tlbs(vm)
    if RECOVER_FREE_NO_GRACE_PERIOD not in vm.hazards:
        grace_period(vm)
    free_tables([table], "NX huge-page recovery")
    vm.stats["nx_recovered"] += 1
    return True


def _possible_nx_huge_page(vm: VM, va: int) -> ShadowPage | None:
    """The oldest table on the page list that maps ``va`` (in any root), read under
    ``tdp_mmu_pages_lock`` as the kernel walks its list of possible NX huge pages."""
    with vm.tdp_mmu_pages_lock:
        idx = va // SP_ENTRIES
        return next((sp for sp in vm.mmu.page_list if sp.index == idx), None)
