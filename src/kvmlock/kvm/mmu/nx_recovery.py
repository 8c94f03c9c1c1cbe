"""NX huge-page recovery: a TDP MMU writer of present SPTEs under *read-mode* ``mmu_lock``.

With the NX huge-page mitigation, an instruction fetch from a huge mapping makes KVM map that
region with a page table of small pages instead. A kernel thread later zaps some of those
tables (``kvm_recover_nx_huge_pages``) so the region can be mapped huge again; newer kernels do
the TDP MMU part with ``mmu_lock`` held for *read*, beside faulting vCPUs. The model maps no
huge pages, so after recovery the next fault simply builds the table again; what it keeps is
the protocol that lets the removal run under read mode (facts from arch/x86/kvm/mmu/mmu.c and
tdp_mmu.c, in the model's own code):

* the entry pointing at the table is cleared with a cmpxchg (``tdp_mmu_set_spte_atomic``), and
  only if it still points at that table;
* every SPTE of the removed table is then *frozen* with an exchange (``handle_removed_pt``):
  until the table's entry is cleared and TLBs flushed, the CPU may still set Dirty in an SPTE,
  the fast path may still make one writable and a fault that walked in before may still
  install one -- the exchange returns whatever is there, and its Accessed/Dirty reach the page;
* TLBs are flushed before the lock is dropped, and the table is freed only after an RCU grace
  period (``call_rcu``), when no lockless walker can still be inside it.

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

from typing import TYPE_CHECKING

from kvmlock import irq
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.shadow import grace_period
from kvmlock.kvm.mmu.tlb import flush_remote_tlbs
from kvmlock.kvm.mmu.update import propagate_ad
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.mmu.shadow import ShadowPage
    from kvmlock.kvm.vm import VM

__all__ = ["recover_nx_huge_page"]

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
RECOVER_FREE_NO_GRACE_PERIOD = mutant(
    "recover_free_no_grace_period", removes="the RCU grace period before a table NX "
    "huge-page recovery removed is freed (freed at once, not by call_rcu)",
    breaks="a shadow page is freed only after every lockless walker that may use it is done")


def recover_nx_huge_page(vm: VM, va: int) -> bool:
    """Zap the TDP page table that maps guest page ``va``, under read-mode ``mmu_lock``; True
    if one was removed (and freed)."""
    mmu = vm.mmu
    if not mmu.tdp:
        raise ValueError("recover_nx_huge_page: the shadow MMU recovers under write-mode "
                         "mmu_lock; the model recovers TDP MMU tables only")
    mmu.check_va(va)
    with vm.mmu_lock.read():
        sp = mmu.walk(va)
        if sp is None or not mmu.clear_parent(sp[0]):
            return False
        table = sp[0]
        _remove_table(vm, table)
        if RECOVER_NO_FLUSH not in vm.hazards:
            flush_remote_tlbs(vm)
    if RECOVER_FREE_NO_GRACE_PERIOD not in vm.hazards:
        grace_period(vm)
    with irq.softirq():  # tdp_mmu_free_sp_rcu_callback
        _check_still_frozen(table)
        table.free("NX huge-page recovery")
    vm.stats["nx_recovered"] += 1
    return True


def _remove_table(vm: VM, sp: ShadowPage) -> None:
    """``handle_removed_pt`` with ``shared``: take the table off the page list, freeze every
    SPTE in it and pass on what each one held."""
    sp.mark_removed("NX huge-page recovery")
    vm.mmu.unlink_page(sp)
    plain = RECOVER_FREEZE_PLAIN_STORE in vm.hazards
    for sptep in sp.sptes:
        # (the kernel retries while the SPTE is already frozen by a fault that will write it
        # again; the model's faults never freeze, so one exchange is enough)
        if plain:
            old = sptep.load()
            sptep.store(S.FROZEN)  # broken: what lands in between is overwritten
        else:
            old = sptep.xchg(S.FROZEN)
        propagate_ad(vm, old)


def _check_still_frozen(sp: ShadowPage) -> None:
    """The table is about to be freed: no one may have written it since it was frozen (only
    a writer that did not exclude the recovery could have)."""
    changed = [f"{sptep.name} = {S.describe(v)}" for sptep in sp.sptes
               if (v := sptep.peek()) != S.FROZEN]
    assert not changed, (
        f"shadow page {sp.index}, removed by NX huge-page recovery, was written after its "
        f"SPTEs were frozen ({'; '.join(changed)}): a writer that relies on mmu_lock held for "
        "write ran beside the read-mode recovery")
