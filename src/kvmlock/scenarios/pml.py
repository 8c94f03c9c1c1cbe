"""Dirty logging by Dirty bits (Page Modification Logging): the CPU logs a page when it sets
the Dirty bit of its SPTE, so KVM harvests by clearing Dirty instead of write-protecting.

* ``dirty_log.pml_harvest`` -- ``KVM_GET_DIRTY_LOG`` (swap each bitmap word with zero, clear
  Dirty on the harvested gfns' SPTEs, flush TLBs, copy) races a guest that keeps writing. The
  clear must be followed by a flush: a vCPU whose TLB still caches the translation with Dirty
  set writes without setting Dirty, so nothing logs that write. And the clear must exchange a
  writable SPTE whose Dirty bit is clear, since the CPU may set Dirty between a plain load and
  store; a Dirty bit overwritten there is a write the next harvest neither flushes for nor logs.

* ``dirty_log.pml_flush_vs_delete`` -- the CPU logs a write in the vCPU's PML buffer; after the
  exit KVM drains the buffer into the dirty bitmap of the gfn's memslot, inside the vCPU's
  ``kvm->srcu`` read side, while the memslot is deleted. The deletion frees the slot's bitmap
  only after a grace period, which waits for the drain.

The invariant is the consequence, checked as a migration would: after a final harvest the copy
built from every harvested page equals guest memory (and no bitmap is written after its free).
"""

from __future__ import annotations

from kvmlock.kvm.guest import GuestFault, guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy
from kvmlock.kvm.mmu.page_track import emulate_write
from kvmlock.kvm.vcpu import VCPU
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.fast_pf import _assert_log_complete
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario

__all__: list[str] = []

_INV = "dirty log complete: every guest write reaches the migrated copy"


def _pml_vm(hazard: str, broken: bool) -> tuple[VM, VCPU, MigrationCopy]:
    """One vCPU with PML, logging slot 0. Its first write installs a writable, Dirty SPTE and
    logs gfn 0; a harvest clears Dirty and flushes, so the CPU logs the next write itself."""
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, pml=True, hazards={hazard: broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)
    mig.round()
    return vm, v0, mig


def _pml_harvest(broken: bool) -> None:
    # Then KVM itself writes the page (as it does for the steal-time or clock pages), which
    # logs gfn 0 without any SPTE's Dirty: the next harvest finds gfn 0 logged while its SPTE
    # is writable and clean, and races the guest's writes.
    vm, v0, mig = _pml_vm("dirty_clear_no_flush", broken)
    emulate_write(v0, 0, 2)

    def guest_writes() -> None:
        guest_write(v0, 0, 3)
        guest_write(v0, 0, 4)

    together(guest_writes, mig.round, names=["vcpu0 writes 3, 4", "KVM_GET_DIRTY_LOG"])
    vm.check()
    # the migration's last rounds, with the guest writing once more in between
    mig.round()
    guest_write(v0, 0, 5)
    _assert_log_complete(mig)


@scenario("dirty_log.pml_harvest.correct",
          rule="a PML harvest clears Dirty on the harvested gfns (an exchange while the CPU may "
               "set it) and flushes TLBs after the clear, before returning the log",
          variant="correct", expect="pass", invariant=_INV,
          catches=("dirty_clear_no_flush", "harvest_flush_before_protect",
                   "clean_spte_plain_store"),
          strategy="dpor", max_runs=20000)
def pml_harvest_correct() -> None:
    _pml_harvest(False)


@scenario("dirty_log.pml_harvest.broken",
          rule="clearing Dirty does not ask for a flush: the vCPU keeps writing through the "
               "translation it cached with Dirty set, and those writes are never logged",
          variant="broken", expect="assertion", invariant=_INV,
          strategy="dpor", max_runs=20000)
def pml_harvest_broken() -> None:
    _pml_harvest(True)


@pair("dirty_log.pml_flush_vs_delete",
      rule="the PML buffer is drained into the dirty bitmap inside the vCPU's kvm->srcu read "
           "side, so a memslot deletion frees the bitmap only after the drain",
      broken_rule="the PML buffer drained outside kvm->srcu: the deletion's grace period does "
                  "not wait for it, and the drain marks the freed dirty bitmap",
      broken_expect="assertion", invariant="no dirty bitmap is written after it was freed",
      catches=("pml_flush_without_srcu",), strategy="dpor", max_runs=20000)
def pml_flush_vs_delete(broken: bool) -> None:
    vm, v0, _ = _pml_vm("pml_flush_without_srcu", broken)  # the next write goes to the buffer

    def guest_writes() -> None:
        try:
            guest_write(v0, 0, 2)
        except GuestFault:
            pass  # the slot was already gone: the write is MMIO

    together(guest_writes, lambda: vm.set_memory_region(0, npages=0),
             names=["vcpu0 writes 2", "delete memslot 0"])
    vm.check()
