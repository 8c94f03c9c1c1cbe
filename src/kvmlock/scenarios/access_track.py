"""Access tracking without A/D bits (locking.rst, "Fast page fault": access-tracked SPTEs).

The host ages a page (clear_flush_young) while the guest keeps reading it. Aging hides the
SPTE from the CPU and saves its R/X bits; the next access faults and the fast path restores
them -- W only on a write. The checks: the page was reported young (Accessed not lost), a read
after aging leaves the SPTE read-only (W only on write), and the guest's earlier write survives
a later swap-out (the dirty state a writable SPTE stood for reached the page). The broken
variant forgets to pass that dirty state on when aging removes W.
"""

from __future__ import annotations

import kvmlock
from kvmlock.kvm.guest import guest_read, guest_write
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.registry import scenario

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}


def _access_track(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2, ad_disabled=True,
            hazards={"access_track_drops_dirty": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)  # writable SPTE: without A/D bits, W is what says "dirty"
    young: list[bool] = []
    seen: list[int] = []

    def host_ages() -> None:
        young.append(vm.host.age(0))

    def vcpu0_reads() -> None:
        seen.append(guest_read(v0, 0))

    tasks = [kvmlock.spawn(host_ages, name="host_ages"),
             kvmlock.spawn(vcpu0_reads, name="vcpu0_reads")]
    for t in tasks:
        t.join()
    assert young == [True], "aging a page the guest had used reported it not young"
    assert seen == [1], f"the guest read {seen} instead of [1]"
    spte = vm.mmu.sptep(0).peek()
    assert S.is_present(spte) and not S.is_writable(spte), (
        f"after aging and a read the SPTE is {S.describe(spte)}: W may come back only on a write")
    vm.host.swap_out(0)
    got = guest_read(v0, 0)
    assert got == 1, (f"the guest wrote 1 but reads {got} after swap-out: aging dropped the "
                      "page's dirty state together with the W bit")


@scenario("access_track.correct",
          rule="access tracking: restore R/X on fault, W only on write, no lost Accessed/Dirty",
          variant="correct", expect="pass",
          invariant="Dirty state reaches the page before W is taken away; W only on a write",
          **_BOUND)
def access_track_correct() -> None:
    _access_track(False)


@scenario("access_track.drops_dirty.broken",
          rule="aging a writable A/D-disabled SPTE without marking the page dirty",
          variant="broken", expect="assertion",
          invariant="Dirty state reaches the page before W is taken away; W only on a write",
          **_BOUND)
def access_track_broken() -> None:
    _access_track(True)
