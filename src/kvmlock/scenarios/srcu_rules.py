"""The SRCU rules of the model's document: which locks a ``kvm->srcu`` read side may take.

``synchronize_srcu(&kvm->srcu)`` waits for every reader. The model calls it where the kernel
does: publishing memslots (under ``kvm->slots_lock``), publishing an I/O bus during
``KVM_CREATE_IRQCHIP`` and a new MSR filter (under ``kvm->lock``), and deleting the APIC-access
memslot during KVM_RUN (under ``vcpu->mutex``). A reader that takes one of those locks can wait
for a task that waits for the reader: the cycle ``L -> kvm->srcu -> L`` lockdep reports, with
the read side a recursive read of the SRCU class and ``synchronize`` an exclusive acquire of it.

``kvm->slots_arch_lock`` is the exception made on purpose: the memslot updater drops it before
``synchronize``, so a reader may take it -- the first shadow root does, to allocate the reverse
maps of every memslot from inside KVM_RUN.

Older versions of the document said the opposite for ``kvm->lock``: taken *inside* the read
side, with ``call_srcu`` instead of ``synchronize`` under it. That rule contradicts the same
document's orders -- ``kvm->lock`` is outside ``kvm->slots_lock``, and the memslot update
synchronizes under ``kvm->slots_lock`` -- which closes the three-lock cycle
``kvm->srcu -> kvm->lock -> kvm->slots_lock -> kvm->srcu``.

Every correct variant runs the model's real paths and checks what SRCU is for: no reader uses a
memslots array, I/O bus or MSR filter that was already freed (each is poisoned when freed and
asserts it is live when read), and the run conforms to the whole document, with the variant's
own rule exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmlock.kvm import ioctls
from kvmlock.kvm.guest import GuestFault, guest_read, guest_write
from kvmlock.kvm.iobus import mmio_write
from kvmlock.kvm.mmu.shadow import check_rmaps
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import check_graph, together
from kvmlock.scenarios.registry import scenario

__all__: list[str] = []

_BOUND = {"max_runs": 500}
_SRCU = "kvm->srcu"


def _create_slot(vm: VM, slot: int, gfn: int) -> Callable[[], None]:
    def create() -> None:
        vm.set_memory_region(slot, base_gfn=gfn, npages=1, hva=gfn)
    return create


def _run(vcpu: Any, *exits: Callable[[Any], object]) -> Callable[[], None]:
    """KVM_RUN handling ``exits``; a guest access no memslot backs is an MMIO exit, fine here."""
    def run() -> None:
        try:
            ioctls.kvm_run(vcpu, *exits)
        except GuestFault:
            pass
    return run


# ---------------------------------------------------------------------- slots_arch_lock

def _first_root_vs_create(hazards: dict[str, bool]) -> None:
    """The first shadow root (KVM_RUN, inside kvm->srcu) racing a memslot create."""
    vm = VM(None, nr_vcpus=1, nr_pages=4, host_pages=4, tdp=False, hazards=hazards)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    for va in (0, 2):  # the guest's own page table, before any shadow root exists
        vm.mmu.gpt[va].store(va + 1)
    together(_run(vm.vcpus[0], lambda v: guest_write(v, 0, 1), lambda v: guest_read(v, 2)),
             _create_slot(vm, 1, 2), names=["vcpu0 KVM_RUN", "KVM_SET_USER_MEMORY_REGION"])
    check_rmaps(vm)


@scenario("srcu.slots_arch_lock_in_reader.correct", variant="correct", expect="pass",
          rule="kvm->slots_arch_lock may be taken inside a kvm->srcu read side: the first "
               "shadow root allocates rmaps under it while a memslot is created",
          invariant="every memslot has rmaps once a root exists; no freed memslots used; the "
                    "run conforms to the document with this SRCU rule exercised", **_BOUND,
          catches=("slots_arch_lock_across_sync", "root_alloc_without_slots_arch_lock",
                   "root_alloc_takes_slots_lock"))
def slots_arch_lock_in_reader() -> None:
    _first_root_vs_create({})
    check_graph(exercised=[("srcu_read_ok", "kvm->slots_arch_lock", _SRCU)])


@scenario("srcu.slots_arch_lock_across_sync.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="the memslot update drops slots_arch_lock after synchronize_srcu, not before",
          invariant="lockdep reports kvm->slots_arch_lock -> kvm->srcu -> kvm->slots_arch_lock",
          **_BOUND)
def slots_arch_lock_across_sync() -> None:
    _first_root_vs_create({"slots_arch_lock_across_sync": True})


@scenario("srcu.slots_arch_lock_across_sync.deadlock", variant="broken", expect="deadlock",
          rule="the same, lockdep off: the updater waits for the vCPU's read side, the vCPU for "
               "slots_arch_lock",
          invariant="all tasks blocked", lockdep=False, **_BOUND)
def slots_arch_lock_across_sync_deadlock() -> None:
    _first_root_vs_create({"slots_arch_lock_across_sync": True})


@scenario("srcu.root_alloc_without_slots_arch_lock.broken", variant="broken", expect="assertion",
          rule="the first shadow root allocates rmaps without slots_arch_lock",
          invariant="a memslot created meanwhile is left without rmaps", max_runs=2000)
def root_alloc_without_slots_arch_lock() -> None:
    _first_root_vs_create({"root_alloc_without_slots_arch_lock": True})


# ---------------------------------------------------------------------- slots_lock, vcpu->mutex

def _apic_access_vs_faults(hazards: dict[str, bool], *, vcpu1: str = "fault") -> None:
    """KVM_RUN deleting the APIC-access memslot (synchronize under vcpu->mutex), racing
    another vCPU's KVM_RUN faulting on memory (its own read side) and a vCPU ioctl."""
    vm = VM(None, nr_vcpus=2, nr_pages=4, host_pages=4, hazards=hazards)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    vm.set_memory_region(ioctls.APIC_ACCESS_SLOT, base_gfn=3, npages=1, hva=3)
    v0, v1 = vm.vcpus
    if vcpu1 == "fault":
        other, name = _run(v1, lambda v: guest_write(v, 1, 1)), "vcpu1 KVM_RUN"
    else:  # broken: work inside a read side that locks a vCPU
        def locks_vcpu0() -> None:
            with vm.srcu.read(), v0.mutex:
                pass
        other, name = locks_vcpu0, "irqfd work (kvm->srcu read)"
    together(_run(v0, ioctls.inhibit_apic_access_page), other,
             names=["vcpu0 KVM_RUN (APICv inhibited)", name])
    assert vm.memslots.access_pointer().by_id(ioctls.APIC_ACCESS_SLOT) is None


@scenario("srcu.vcpu_mutex_outside_reader.correct", variant="correct", expect="pass",
          rule="vcpu->mutex is taken outside the kvm->srcu read side; KVM_RUN leaves its read "
               "side to delete the APIC-access memslot, which synchronizes under vcpu->mutex",
          invariant="no freed memslots used; the run conforms to the document with "
                    "synchronize under vcpu->mutex and slots_lock exercised", **_BOUND,
          catches=("apic_access_delete_under_srcu", "run_srcu_before_vcpu_mutex"))
def vcpu_mutex_outside_reader() -> None:
    _apic_access_vs_faults({})
    check_graph(exercised=[("srcu_sync_inside", "vcpu->mutex", _SRCU),
                           ("srcu_sync_inside", "kvm->slots_lock", _SRCU)])


@scenario("srcu.slots_lock_in_reader.broken", variant="broken", expect="deadlock",
          rule="KVM_RUN deletes the APIC-access memslot without leaving its kvm->srcu read side",
          invariant="the vCPU's synchronize_srcu waits for its own read side (lockdep also "
                    "reports kvm->srcu -> kvm->slots_lock -> kvm->srcu)", **_BOUND)
def slots_lock_in_reader() -> None:
    _apic_access_vs_faults({"apic_access_delete_under_srcu": True})


@scenario("srcu.slots_lock_in_reader.deadlock", variant="broken", expect="deadlock",
          rule="the same, lockdep off: the explorer finds the hang by itself",
          invariant="all tasks blocked", lockdep=False, **_BOUND)
def slots_lock_in_reader_deadlock() -> None:
    _apic_access_vs_faults({"apic_access_delete_under_srcu": True})


@scenario("srcu.vcpu_mutex_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="an exit handler takes another vCPU's vcpu->mutex inside its kvm->srcu read side",
          invariant="lockdep reports vcpu->mutex -> kvm->srcu -> vcpu->mutex", **_BOUND)
def vcpu_mutex_in_reader() -> None:
    _apic_access_vs_faults({}, vcpu1="locks vcpu0")


# ---------------------------------------------------------------------- kvm->lock

def _vm_ioctls_vs_exits(hazards: dict[str, bool] | None = None) -> VM:
    """KVM_CREATE_IRQCHIP and KVM_X86_SET_MSR_FILTER (both synchronize under kvm->lock)
    racing a vCPU whose exits read the I/O bus and the MSR filter inside kvm->srcu."""
    vm = VM(None, nr_vcpus=1, hazards=hazards)

    def exits(v: Any) -> None:
        ioctls.msr_exit(v, "MSR_IA32_TSC")
        mmio_write(v, ioctls.PIC, 1)

    together(lambda: ioctls.create_irqchip(vm),
             lambda: ioctls.set_msr_filter(vm, frozenset({"MSR_IA32_TSC"})),
             _run(vm.vcpus[0], exits),
             names=["KVM_CREATE_IRQCHIP", "KVM_X86_SET_MSR_FILTER", "vcpu0 KVM_RUN"])
    return vm


@scenario("srcu.kvm_lock_outside_reader.correct", variant="correct", expect="pass",
          rule="kvm->lock is taken outside the kvm->srcu read side; KVM_CREATE_IRQCHIP and "
               "KVM_X86_SET_MSR_FILTER synchronize under it",
          invariant="no freed I/O bus or MSR filter read by an exit; the run conforms to the "
                    "document with synchronize under kvm->lock exercised", **_BOUND,
          catches=("free_before_grace_period", "msr_exit_takes_kvm_lock"))
def kvm_lock_outside_reader() -> None:
    vm = _vm_ioctls_vs_exits()
    assert vm.msr_filter.access_pointer().denied == {"MSR_IA32_TSC"}
    check_graph(exercised=[("srcu_sync_inside", "kvm->lock", _SRCU)])


@scenario("srcu.kvm_lock_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="an exit handler takes kvm->lock inside its kvm->srcu read side, while VM "
               "ioctls synchronize under kvm->lock",
          invariant="the same paths with mutant msr_exit_takes_kvm_lock: lockdep reports "
                    "kvm->lock -> kvm->srcu -> kvm->lock", **_BOUND)
def kvm_lock_in_reader() -> None:
    _vm_ioctls_vs_exits({"msr_exit_takes_kvm_lock": True})


@scenario("srcu.old_rule_kvm_lock_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="older rule: kvm->lock inside kvm->srcu, with call_srcu (not synchronize) under "
               "kvm->lock -- but kvm->lock is outside slots_lock, which synchronizes",
          invariant="lockdep reports kvm->srcu -> kvm->lock -> kvm->slots_lock -> kvm->srcu",
          **_BOUND)
def old_rule_kvm_lock_in_reader() -> None:
    vm = VM(None, nr_vcpus=1, nr_pages=2, host_pages=2)

    def exit_under_kvm_lock(v: Any) -> None:
        with vm.lock:  # what the older document allowed
            pass

    together(_create_slot(vm, 0, 0), lambda: ioctls.create_pit(vm),
             _run(vm.vcpus[0], exit_under_kvm_lock),
             names=["KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_PIT2", "vcpu0 KVM_RUN"])


# ---------------------------------------------------------------------- the grace period

@scenario("srcu.free_before_grace_period.broken", variant="broken", expect="assertion",
          rule="old memslots freed without waiting for a grace period",
          invariant="a fault inside kvm->srcu uses the freed (poisoned) array", **_BOUND)
def free_before_grace_period() -> None:
    vm = VM(None, nr_vcpus=1, nr_pages=2, host_pages=2, hazards={"free_before_grace_period": True})
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    together(_run(vm.vcpus[0], lambda v: guest_read(v, 0)), _create_slot(vm, 1, 1),
             names=["vcpu0 KVM_RUN", "KVM_SET_USER_MEMORY_REGION"])
