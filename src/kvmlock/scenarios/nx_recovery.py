"""NX huge-page recovery, the TDP MMU's read-mode remover of page tables, against the paths
it runs beside (see :mod:`kvmlock.kvm.mmu.nx_recovery`).

* ``nx_recovery.vs_write`` -- a vCPU writes a page of a logged slot (the fast path makes its
  SPTE writable, the CPU sets Dirty) while recovery removes the table; then the host swaps the
  page out and the guest reads it back. Recovery must freeze each SPTE with an exchange (a
  Dirty bit set between a load and a store would be lost and the page not written back), flush
  before dropping ``mmu_lock`` (or the vCPU keeps a translation no SPTE stands for, into the
  frame swap-out frees), and free the table only after a grace period (the fast path may still
  be walking it).
* ``nx_recovery.vs_slow_fault`` -- a vCPU's first write to a page of a table that exists
  takes the slow TDP path while recovery removes that table. The fault may already hold the
  table (from its walk) when recovery clears the parent and freezes the SPTEs: it must see the
  frozen SPTE and retry, because only the thread that froze an SPTE may write it.
* ``nx_recovery.flush_vs_swap_out`` -- a vCPU reads a page its TLB caches while recovery
  removes the table and the host swaps the page out. Recovery must flush before it drops
  ``mmu_lock``: the swap-out's invalidation may take the lock next, find no SPTE, flush
  nothing and free the frame while the vCPU still holds the translation (in ``vs_write`` the
  swap-out comes after recovery has returned, so a late flush is still in time there).
* ``dirty_log.harvest_vs_nx_recovery`` -- ``KVM_GET_DIRTY_LOG`` write-protects a written
  page while recovery removes its table. Write mode keeps recovery out while the harvest walks
  and rewrites SPTEs with plain stores; with read mode the two overlap, and the harvest walks a
  table that is removed (its frozen SPTEs overwritten) or already freed under it.

Both end with the consequences: the guest reads back what it wrote, and a final harvest finds
every write (the migration copy equals guest memory).
"""

from __future__ import annotations

from kvmlock.kvm.guest import guest_read, guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy
from kvmlock.kvm.mmu.nx_recovery import recover_nx_huge_page
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.fast_pf import _assert_log_complete
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}
_INV = ("the guest reads back what it wrote after swap-out, no access touches a freed frame "
        "or shadow page, and the dirty log is complete")


def _logged_vm(hazards: dict[str, bool] | None = None) -> VM:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3, hazards=hazards)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    return vm


@scenario("nx_recovery.vs_write.correct",
          rule="NX huge-page recovery under read-mode mmu_lock freezes each SPTE of the table "
               "it removes with an exchange, flushes TLBs before dropping mmu_lock and frees "
               "the table after an RCU grace period",
          variant="correct", expect="pass", invariant=_INV,
          catches=("recover_freeze_plain_store", "recover_no_flush",
                   "recover_free_no_grace_period"), **_BOUND)
def vs_write() -> None:
    vm = _logged_vm()
    (v0,) = vm.vcpus
    guest_read(v0, 0)  # read fault with logging on: read-only, MMU-writable, Accessed

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 5)  # the fast path sets W, the CPU sets Dirty

    together(vcpu0_writes, lambda: recover_nx_huge_page(vm, 0),
             names=["vcpu0 writes 5", "NX recovery"])
    vm.check()
    vm.host.swap_out(0)  # no SPTE left to zap: its notifier flushes nothing
    got = guest_read(v0, 0)  # through the TLB, unless a flush emptied it
    assert got == 5, (f"the guest wrote 5 but reads {got:#x} after swap-out: a Dirty bit "
                      "was lost when recovery removed the SPTE, so the page was not written "
                      "back")


@pair("nx_recovery.vs_slow_fault",
      rule="a TDP fault under read-mode mmu_lock retries when the SPTE it would install into "
           "is frozen: NX huge-page recovery is removing that table",
      broken_rule="the TDP fault cmpxchg's over a frozen SPTE: it installs into a table "
                  "recovery has unlinked and is about to free",
      broken_expect="assertion", invariant=_INV, catches=("tdp_fault_overwrites_frozen",),
      **_BOUND)
def vs_slow_fault(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=3,
            hazards={"tdp_fault_overwrites_frozen": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_read(v0, 1)  # builds the table of gfns 0-1; gfn 0 has no SPTE yet

    def vcpu0_writes() -> None:
        guest_write(v0, 0, 5)  # no SPTE: the slow TDP path, walking into that table

    together(vcpu0_writes, lambda: recover_nx_huge_page(vm, 0),
             names=["vcpu0 writes 5", "NX recovery"])
    vm.check()
    got = guest_read(v0, 0)
    assert got == 5, f"the guest wrote 5 but reads {got:#x}"


@pair("dirty_log.harvest_vs_nx_recovery",
      rule="KVM_GET_DIRTY_LOG write-protects under mmu_lock held for write, so no read-mode "
           "writer (NX huge-page recovery) removes or freezes the SPTEs it rewrites",
      broken_rule="the harvest write-protects under read-mode mmu_lock: recovery removes the "
                  "table it walks and frees it under it",
      broken_expect="assertion", invariant=_INV, catches=("harvest_read_lock",), **_BOUND)
def harvest_vs_nx_recovery(broken: bool) -> None:
    vm = _logged_vm({"harvest_read_lock": broken})
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)  # gfn 0 logged; its SPTE writable and Dirty
    together(mig.round, lambda: recover_nx_huge_page(vm, 0),
             names=["KVM_GET_DIRTY_LOG", "NX recovery"])
    vm.check()
    guest_write(v0, 0, 2)
    _assert_log_complete(mig)


@pair("nx_recovery.flush_vs_swap_out",
      rule="NX huge-page recovery flushes TLBs before it drops mmu_lock: an invalidation that "
           "takes the lock next finds the recovered gfn's SPTE gone and flushes nothing",
      broken_rule="recovery flushes after read_unlock: in between, swap-out's invalidation "
                  "finds no SPTE, flushes nothing and frees the frame, and the vCPU reads it "
                  "through the translation its TLB still holds",
      broken_expect="assertion", catches=("recover_flush_after_unlock",),
      invariant="no vCPU reads a frame the host freed; the guest reads back what it wrote "
                "after swap-out", **_BOUND)
def flush_vs_swap_out(broken: bool) -> None:
    # vcpu0 wrote gfn 0, so its TLB caches the translation; it reads the gfn again while
    # recovery removes the table and the host swaps the page out.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2,
            hazards={"recover_flush_after_unlock": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 5)
    got: list[int] = []
    together(lambda: got.append(guest_read(v0, 0)), lambda: recover_nx_huge_page(vm, 0),
             lambda: vm.host.swap_out(0),
             names=["vcpu0 reads page 0", "NX recovery", "swap-out of page 0"])
    vm.check()
    assert got == [5], f"vcpu0 read {got[0]:#x} from page 0 while it was swapped out, not 5"
    after = guest_read(v0, 0)
    assert after == 5, f"the guest wrote 5 but reads {after:#x} after swap-out"
