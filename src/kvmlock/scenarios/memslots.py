"""Deleting a memslot while a vCPU faults on it (locking.rst: memslots are read under
``kvm->srcu``; the updater publishes, waits for a grace period, then zaps).

A fault looks the memslot up inside the SRCU read side and installs its SPTE later. Deletion
therefore first publishes an array where the slot is invalid, waits for the grace period (every
fault that could still see the old array has finished), and only then zaps the slot's SPTEs. The
invariant: once the deletion returns, no SPTE maps a gfn of the deleted slot. The broken
variant zaps before the grace period, and a fault that had loaded the old array installs an
SPTE after the zap.

``memslots.shadowed_table_delete`` is the same protocol seen from a vCPU that does not fault
but starts shadowing a guest page table: the gfn's write-track count lives in its memslot, which
the deletion frees after the grace period, so the vCPU looks the slot up and raises the count
inside KVM_RUN's read side.
"""

from __future__ import annotations

from collections.abc import Callable

import kvmlock
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write, set_gpte
from kvmlock.kvm.iobus import mmio_write
from kvmlock.kvm.ioctls import (
    assign_ioeventfd,
    bus_devices,
    deassign_ioeventfd,
    msr_exit,
    set_msr_filter,
)
from kvmlock.kvm.memslots import READONLY
from kvmlock.kvm.mmu import spte as S
from kvmlock.kvm.mmu.page_track import shadow_guest_table
from kvmlock.kvm.mmu.shadow import check_rmaps
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import pair, scenario

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}


def _delete_vs_fault(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2,
            hazards={"delete_zaps_before_sync": broken})
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus

    def vcpu0_reads() -> None:
        try:
            guest_read(v0, 0)
        except GuestFault:
            pass  # the slot was already gone: an MMIO exit, which is fine

    def deleter() -> None:
        vm.set_memory_region(0, npages=0)

    tasks = [kvmlock.spawn(vcpu0_reads, name="vcpu0_reads"),
             kvmlock.spawn(deleter, name="deleter")]
    for t in tasks:
        t.join()
    left = [va for va in range(2)
            if (p := vm.mmu.sptep(va)) is not None and S.is_present(p.peek())]
    assert not left, (f"memslot 0 was deleted but SPTEs still map guest pages {left}: a fault "
                      "that saw the old memslots installed them after the zap")
    vm.check()
    try:
        got = guest_read(v0, 0)
    except GuestFault:
        return
    raise AssertionError(f"memslot 0 was deleted, yet the guest still reads {got} from it: a "
                         "translation outlived the zap (no TLB flush)")


@scenario("memslots.delete.correct",
          rule="memslot delete: invalidate, SRCU grace period, then zap", variant="correct",
          expect="pass", invariant="a deleted memslot leaves no SPTE behind",
          catches=("delete_zaps_before_sync", "zap_no_flush", "free_before_grace_period",
                   "page_fault_no_srcu", "memslot_update_without_slots_lock",
                   "fault_maps_invalid_slot"), **_BOUND)
def delete_correct() -> None:
    _delete_vs_fault(False)


@scenario("memslots.delete.broken",
          rule="memslot delete zaps before the SRCU grace period", variant="broken",
          expect="assertion", invariant="a deleted memslot leaves no SPTE behind", **_BOUND)
def delete_broken() -> None:
    _delete_vs_fault(True)


@scenario("memslots.delete_vs_reclaim.correct",
          rule="kvm_zap_gfn_range flushes remote TLBs before it releases mmu_lock: once the "
               "SPTE is gone, a notifier for the same page finds nothing and flushes nothing",
          variant="correct", expect="pass",
          invariant="no vCPU reaches a freed frame through a cached translation",
          catches=("zap_flush_after_unlock", "zap_no_flush"), strategy="dpor", max_runs=2000,
          preemption_bound=1)
def delete_vs_reclaim() -> None:
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)  # the vCPU's TLB caches the translation

    def reclaim_then_read() -> None:
        vm.host.swap_out(0)  # frees the frame once its notifier has run
        try:
            guest_read(v0, 0)
        except GuestFault:
            pass  # the slot is gone: an MMIO exit

    together(lambda: vm.set_memory_region(0, npages=0), reclaim_then_read,
             names=["delete slot", "reclaim, vcpu0 reads"])
    vm.check()


@scenario("memslots.delete_vs_reclaim_shadow.correct",
          rule="a deleted memslot's arch data (its rmaps) is freed only after the final swap "
               "and its grace period: the published invalid copy shares it, and a swap-out's "
               "invalidation zaps through its rmaps meanwhile",
          variant="correct", expect="pass",
          invariant="no memslot's arch data is used after it was freed; no vCPU reaches a "
                    "freed frame",
          catches=("arch_free_before_final_swap",), **_BOUND)
def delete_vs_reclaim_shadow() -> None:
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.mmu.gpt[0].store(1)  # guest page 0 -> gfn 0
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)  # the first shadow root: slot 0 gets its rmaps
    together(lambda: vm.set_memory_region(0, npages=0), lambda: vm.host.swap_out(0),
             names=["delete slot 0", "host swaps out hva 0"])
    vm.check()


def shadowed_table_vs_update(change: str) -> None:
    """vcpu0 shadows the guest page table at gfn 1 (the first shadow root, then the count)
    while userspace deletes or moves gfn 1's memslot."""
    vm = VM(nr_vcpus=1, nr_pages=3, host_pages=3)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.set_memory_region(1, base_gfn=1, npages=1, hva=1)
    (v0,) = vm.vcpus
    kw = {"npages": 0} if change == "delete" else {"base_gfn": 2, "npages": 1, "hva": 1}
    tasks = [kvmlock.spawn(lambda: shadow_guest_table(v0, 1), name="vcpu0_shadows_gfn1"),
             kvmlock.spawn(lambda: vm.set_memory_region(1, **kw), name=f"{change}_slot1")]
    for t in tasks:
        t.join()
    vm.check()


@scenario("memslots.move.correct",
          rule="moving a memslot zaps the SPTEs of its old gfns and, once a shadow root "
               "exists, gives the moved slot its rmaps before it is published; a vCPU reads "
               "the slot meanwhile",
          variant="correct", expect="pass",
          invariant="every present SPTE maps a gfn of a live memslot; every memslot has its "
                    "rmaps once a shadow root exists; the guest reads its data at the new gfn",
          catches=("move_keeps_old_sptes", "moved_slot_without_rmaps"), **_BOUND)
def move() -> None:
    # Shadow paging: page 0 -> gfn 0 and page 1 -> gfn 2. The slot (gfns 0-1, hvas 0-1)
    # moves to gfns 2-3: page 0's SPTE must go, and page 1 then reaches hva 0's data.
    vm = VM(nr_vcpus=1, nr_pages=4, host_pages=4, tdp=False)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    set_gpte(vm, 0, 0)
    set_gpte(vm, 1, 2)
    guest_write(v0, 0, 7)

    def vcpu0_reads() -> None:
        try:
            guest_read(v0, 0)
        except GuestFault:
            pass  # gfn 0 is no longer backed: an MMIO exit

    together(vcpu0_reads, lambda: vm.set_memory_region(0, base_gfn=2, npages=2, hva=0),
             names=["vcpu0 reads page 0", "move slot 0 to gfn 2"])
    vm.check()
    check_rmaps(vm)
    got = guest_read(v0, 1)
    assert got == 7, f"page 1 maps gfn 2, now hva 0 (holding 7), but the guest reads {got}"


@scenario("memslots.shadowed_table_delete.correct",
          rule="a vCPU raises a shadowed gfn's write-track count, kept in its memslot, inside "
               "KVM_RUN's kvm->srcu read side while the memslot is deleted",
          variant="correct", expect="pass",
          invariant="no memslot's arch data (rmaps, write-track counts) is used after the "
                    "deletion freed it",
          catches=("shadow_table_without_srcu",), **_BOUND)
def shadowed_table_delete() -> None:
    shadowed_table_vs_update("delete")


# ---------------------------------------------------------------------- I/O buses

def _bus_update_vs_mmio(update: str) -> None:
    """vCPU 0 writes the doorbell at 0x1000 while KVM_IOEVENTFD deassigns it or registers
    a second device (``update``: "deassign" or "assign")."""
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1)
    assign_ioeventfd(vm, 0x1000, "doorbell")
    (bell,) = vm.buses.access_pointer().devs
    (v0,) = vm.vcpus
    landed: list[bool] = []

    def vcpu0_mmio() -> None:
        landed.append(mmio_write(v0, 0x1000, 1))

    def ioctl() -> None:
        if update == "deassign":
            deassign_ioeventfd(vm, 0x1000)
        else:
            assign_ioeventfd(vm, 0x2000, "second")

    tasks = [kvmlock.spawn(vcpu0_mmio, name="vcpu0_mmio"),
             kvmlock.spawn(ioctl, name=f"KVM_IOEVENTFD {update}")]
    for t in tasks:
        t.join()
    if update == "deassign":
        assert bell.writes == ([1] if landed == [True] else []), "an MMIO write went astray"
    else:
        assert landed == [True] and bell.writes == [1], "the MMIO write missed its device"


def _rom_write(vm: VM, vcpu) -> bool:
    """The guest writes its ROM; True when the write reached memory (it must not)."""
    try:
        guest_write(vcpu, 0, 9)
    except GuestFault:
        return False  # exits to userspace, which emulates (here: ignores) it
    return True


@scenario("memslots.readonly.correct",
          rule="a read-only memslot is mapped without Host-writable, so neither fault path "
               "makes it writable, even racing another vCPU's read fault",
          variant="correct", expect="pass",
          invariant="no SPTE of a read-only memslot is writable; the guest cannot change ROM",
          catches=("readonly_slot_writable", "fast_pf_ignore_mmu_writable"), **_BOUND)
def readonly_correct() -> None:
    vm = VM(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=READONLY)
    v0, v1 = vm.vcpus
    wrote: list[bool] = []
    tasks = [kvmlock.spawn(lambda: guest_read(v0, 0), name="vcpu0_reads"),
             kvmlock.spawn(lambda: wrote.append(_rom_write(vm, v1)), name="vcpu1_writes")]
    for t in tasks:
        t.join()
    wrote.append(_rom_write(vm, v1))  # the SPTE is present now: the fast path is asked too
    vm.check()
    assert not any(wrote) and vm.host.contents(0) == 0, (
        f"the guest changed its read-only memory (now {vm.host.contents(0)}): a write fault "
        "on a page without Host-writable was fixed by making the SPTE writable")


@scenario("iobus.unregister.correct",
          rule="kvm->buses: MMIO looks devices up under kvm->srcu; (un)registering holds "
               "slots_lock and waits for a grace period before freeing",
          variant="correct", expect="pass",
          invariant="no device is written after its unregistration freed it",
          catches=("mmio_without_srcu", "bus_update_without_slots_lock"), **_BOUND)
def iobus_unregister_correct() -> None:
    _bus_update_vs_mmio("deassign")


@scenario("iobus.register.correct",
          rule="kvm->buses: a registration publishes the new bus and frees the old one only "
               "after a grace period, while a vCPU's MMIO lookup walks it inside kvm->srcu",
          variant="correct", expect="pass",
          invariant="no MMIO lookup reads a freed bus; the write reaches the registered device",
          catches=("bus_register_no_grace_period",), **_BOUND)
def iobus_register_correct() -> None:
    _bus_update_vs_mmio("assign")


def _try_deassign(vm: VM, addr: int) -> bool:
    try:
        deassign_ioeventfd(vm, addr)
    except ValueError:
        return False  # ENOENT: the other deassign took it
    return True


@scenario("iobus.two_deassigns.correct",
          rule="KVM_IOEVENTFD deassign finds the ioeventfd and unregisters it in one "
               "kvm->slots_lock section: two deassigns of it race",
          variant="correct", expect="pass",
          invariant="one deassign succeeds and the other gets ENOENT; the device leaves the "
                    "bus and is freed once",
          catches=("deassign_lookup_apart",), **_BOUND)
def iobus_two_deassigns_correct() -> None:
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1)
    assign_ioeventfd(vm, 0x1000, "doorbell")
    (bell,) = vm.buses.access_pointer().devs
    done = together(lambda: _try_deassign(vm, 0x1000), lambda: _try_deassign(vm, 0x1000),
                    names=["KVM_IOEVENTFD deassign a", "KVM_IOEVENTFD deassign b"])
    assert sorted(done) == [False, True], f"two deassigns of one ioeventfd returned {done}"
    assert bell.freed and not bus_devices(vm), "the ioeventfd is still on the bus"


@scenario("msr_filter.update.correct",
          rule="kvm->arch.msr_filter: an MSR exit reads it under kvm->srcu; "
               "KVM_X86_SET_MSR_FILTER publishes a new one under kvm->lock and frees the old "
               "one after a grace period",
          variant="correct", expect="pass",
          invariant="no exit reads a freed filter; an exit sees the old filter or the new one",
          catches=("msr_exit_without_srcu", "msr_filter_update_without_kvm_lock"), **_BOUND)
def msr_filter_update_correct() -> None:
    _msr_exit_vs_filter_update(VM(nr_vcpus=1, nr_pages=1, host_pages=1))


def _msr_exit_vs_filter_update(vm: VM, *others: tuple[str, Callable[[], object]]) -> None:
    (v0,) = vm.vcpus
    allowed: list[bool] = []
    together(lambda: allowed.append(msr_exit(v0, "MSR_IA32_TSC")),
             lambda: set_msr_filter(vm, frozenset({"MSR_IA32_TSC"})), *(fn for _, fn in others),
             names=["vcpu0_rdmsr", "KVM_X86_SET_MSR_FILTER", *(name for name, _ in others)])
    assert len(allowed) == 1 and vm.msr_filter.access_pointer().denied == {"MSR_IA32_TSC"}


@pair("srcu.two_grace_periods",
      rule="kvm->srcu: a grace period waits for every reader that entered before it, even "
           "while another updater's grace period (a memslot update under slots_lock) runs "
           "beside it (KVM_X86_SET_MSR_FILTER under kvm->lock)",
      broken_rule="kvm->srcu: synchronize_srcu waits only for the readers of the epoch its own "
                  "flip closed, so the second of two overlapping grace periods forgets a "
                  "reader older than both",
      broken_expect="assertion", catches=("srcu_waits_one_epoch",),
      invariant="no MSR exit reads a freed filter, whichever grace period ends first", **_BOUND)
def srcu_two_grace_periods(broken: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=1, host_pages=1, hazards={"srcu_waits_one_epoch": broken})
    _msr_exit_vs_filter_update(vm, ("KVM_SET_USER_MEMORY_REGION", lambda: vm.set_memory_region(
        0, base_gfn=0, npages=1, hva=0)))
