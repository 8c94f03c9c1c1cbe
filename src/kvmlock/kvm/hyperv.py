"""Hyper-V emulation's partition-wide state, guarded by ``kvm->arch.hyperv.hv_lock``.

Some Hyper-V MSRs belong to a vCPU (its SynIC, its timers) and some to the whole partition
(guest OS id, hypercall page, reference TSC page). A write to a partition-wide MSR comes from
one vCPU -- a guest WRMSR exit during KVM_RUN, or KVM_SET_MSRS from userspace -- so it runs
with that vCPU's ``vcpu->mutex`` held, and it must not race with the same write from another
vCPU: ``hv_lock`` serialises them. That is the documented order ``vcpu->mutex`` outside
``hv_lock``; nothing is taken inside ``hv_lock``.
"""

from __future__ import annotations

from typing import Any

from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import guarded_by

__all__ = ["PARTITION_MSRS", "HyperV"]

HV_LOCK_LOCKS_VCPUS = mutant(
    "hv_lock_locks_vcpus",
    removes="(adds) every vcpu->mutex taken under hv_lock by KVM_HYPERV_EVENTFD",
    breaks="vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock")

HV_MSR_WITHOUT_HV_LOCK = mutant(
    "hv_msr_without_hv_lock", removes="hv_lock around a partition-wide Hyper-V MSR write",
    breaks="kvm->arch.hyperv.hv_lock protects the partition-wide Hyper-V state")

HV_EVENTFD_WITHOUT_HV_LOCK = mutant(
    "hv_eventfd_without_hv_lock", removes="hv_lock around KVM_HYPERV_EVENTFD's binding",
    breaks="kvm->arch.hyperv.hv_lock protects the eventfd bindings")

#: Partition-wide Hyper-V MSRs (names as in the TLFS); everything else is per vCPU here.
PARTITION_MSRS = frozenset({
    "HV_X64_MSR_GUEST_OS_ID", "HV_X64_MSR_HYPERCALL", "HV_X64_MSR_REFERENCE_TSC",
    "HV_X64_MSR_TSC_EMULATION_CONTROL", "HV_X64_MSR_CRASH_CTL",
})


class HyperV:
    """The Hyper-V state of one VM; ``vm.hv_lock`` is the VM's own lock object."""

    #: the partition-wide MSRs' values
    partition = guarded_by("lock")
    #: the connection ids KVM_HYPERV_EVENTFD bound
    eventfds = guarded_by("lock")

    def __init__(self, vm: Any) -> None:
        lock = getattr(vm, "hv_lock", None)
        if lock is None:
            raise TypeError(f"HyperV needs a VM with an hv_lock, got {vm!r}")
        self.vm = vm
        self.lock = lock
        self.partition: dict[str, int] = {}
        self.per_vcpu: dict[tuple[int, str], int] = {}
        self.eventfds: set[int] = set()

    def set_msr(self, vcpu: Any, msr: str, value: int) -> None:
        """WRMSR from ``vcpu`` (its mutex held). Partition-wide MSRs go under ``hv_lock``."""
        if not isinstance(msr, str) or not msr.startswith("HV_X64_MSR_"):
            raise ValueError(f"not a Hyper-V MSR name: {msr!r}")
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{msr}: value must be a non-negative integer, got {value!r}")
        vcpu.mutex.assert_held()
        if msr in PARTITION_MSRS:
            with unless(HV_MSR_WITHOUT_HV_LOCK, self.vm.hazards, self.lock):
                self.partition[msr] = value
        else:
            self.per_vcpu[(vcpu.id, msr)] = value

    def eventfd_assign(self, conn_id: int) -> None:
        """``KVM_HYPERV_EVENTFD``: a VM ioctl binding a connection id, under ``hv_lock``."""
        if not isinstance(conn_id, int) or conn_id < 0:
            raise ValueError(f"conn_id must be a non-negative integer, got {conn_id!r}")
        with unless(HV_EVENTFD_WITHOUT_HV_LOCK, self.vm.hazards, self.lock):
            if self.vm.hazards.hv_lock_locks_vcpus:
                for vcpu in self.vm.vcpus:  # broken: vcpu->mutex is ordered outside hv_lock
                    with vcpu.mutex:
                        pass
            self.eventfds.add(conn_id)

    def get_msr(self, vcpu: Any, msr: str) -> int:
        vcpu.mutex.assert_held()
        if msr in PARTITION_MSRS:
            with self.lock:
                return self.partition.get(msr, 0)
        return self.per_vcpu.get((vcpu.id, msr), 0)
