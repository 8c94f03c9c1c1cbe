"""Dirty logging by Dirty bits (Page Modification Logging): the CPU logs a page when it sets
the Dirty bit of its SPTE, so KVM harvests by clearing Dirty instead of write-protecting.

* ``dirty_log.pml_harvest`` -- ``KVM_GET_DIRTY_LOG`` (swap each bitmap word with zero, clear
  Dirty on the harvested gfns' SPTEs, flush TLBs, copy) races a guest that keeps writing. The
  clear must be followed by a flush: a vCPU whose TLB still caches the translation with Dirty
  set writes without setting Dirty, so nothing logs that write. And the clear must exchange a
  writable SPTE whose Dirty bit is clear, since the CPU may set Dirty between a plain load and
  store; a Dirty bit overwritten there is a write the next harvest neither flushes for nor logs.

The invariant is the consequence, checked as a migration would: after a final harvest the copy
built from every harvested page equals guest memory.
"""

from __future__ import annotations

from kvmlock.kvm.guest import guest_write
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.mmu.dirty_log import MigrationCopy
from kvmlock.kvm.mmu.page_track import emulate_write
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.fast_pf import _assert_log_complete
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import scenario

__all__: list[str] = []

_INV = "dirty log complete: every guest write reaches the migrated copy"


def _pml_harvest(broken: bool) -> None:
    # One vCPU with PML. Its first write installs a writable, Dirty SPTE and logs gfn 0; a
    # harvest clears Dirty and flushes. Then KVM itself writes the page (as it does for the
    # steal-time or clock pages), which logs gfn 0 without any SPTE's Dirty: the next harvest
    # finds gfn 0 logged while its SPTE is writable and clean, and races the guest's writes.
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, pml=True,
            hazards={"dirty_clear_no_flush": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)
    (v0,) = vm.vcpus
    mig = MigrationCopy(vm, 0)
    guest_write(v0, 0, 1)
    mig.round()
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
