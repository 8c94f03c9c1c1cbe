"""Xen emulation's VM-wide state, guarded by ``kvm->arch.xen.xen_lock``.

Xen HVM guests share VM-wide state with the host (the shared-info page, the upcall vector,
the hypercall page). It is set both through VM ioctls (no vCPU involved) and through vCPU
ioctls (that vCPU's ``vcpu->mutex`` held), so ``xen_lock`` is ordered inside ``vcpu->mutex``
and is otherwise a leaf. Being a lock of its own rather than ``kvm->lock`` matters: some of
these paths run inside ``kvm->srcu`` read sections, where ``kvm->lock`` must not be taken
(``synchronize_srcu`` may be called under ``kvm->lock``), while nothing waits for a grace
period under ``xen_lock``.
"""

from __future__ import annotations

from typing import Any

from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import guarded_by

__all__ = ["ATTRS", "Xen"]

XEN_LOCK_LOCKS_VCPUS = mutant(
    "xen_lock_locks_vcpus",
    removes="(adds) every vcpu->mutex taken under xen_lock by a VM-wide Xen attribute write",
    breaks="vcpu->mutex is taken outside kvm->arch.xen.xen_lock")

XEN_ATTR_WITHOUT_XEN_LOCK = mutant(
    "xen_attr_without_xen_lock", removes="xen_lock around KVM_XEN_HVM_SET_ATTR's write",
    breaks="kvm->arch.xen.xen_lock protects the VM-wide Xen state")

XEN_VCPU_ATTR_WITHOUT_XEN_LOCK = mutant(
    "xen_vcpu_attr_without_xen_lock", removes="xen_lock around KVM_XEN_VCPU_SET_ATTR's write",
    breaks="kvm->arch.xen.xen_lock protects each vCPU's Xen attributes")

ATTRS = frozenset({"long_mode", "shared_info", "upcall_vector", "vcpu_info", "vcpu_time_info",
                   "runstate", "timer"})
VM_ATTRS = frozenset({"long_mode", "shared_info", "upcall_vector"})


class Xen:
    """The Xen state of one VM; ``vm.xen_lock`` is the VM's own lock object."""

    #: VM-wide attributes (shared info, upcall vector, long mode)
    attrs = guarded_by("lock")
    #: each vCPU's attributes (vcpu_info, runstate, timer), set by its vCPU ioctls
    vcpu_attrs = guarded_by("lock")

    def __init__(self, vm: Any) -> None:
        lock = getattr(vm, "xen_lock", None)
        if lock is None:
            raise TypeError(f"Xen needs a VM with a xen_lock, got {vm!r}")
        self.vm = vm
        self.lock = lock
        self.attrs: dict[str, int] = {}
        self.vcpu_attrs: dict[tuple[int, str], int] = {}

    @staticmethod
    def _check(attr: str, allowed: frozenset[str], value: int) -> None:
        if attr not in allowed:
            raise ValueError(f"unknown Xen attribute {attr!r}; expected one of {sorted(allowed)}")
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"Xen attribute {attr}: value must be a non-negative integer, "
                             f"got {value!r}")

    def hvm_set_attr(self, attr: str, value: int) -> None:
        """``KVM_XEN_HVM_SET_ATTR``: a VM ioctl, so only ``xen_lock``."""
        self._check(attr, VM_ATTRS, value)
        with unless(XEN_ATTR_WITHOUT_XEN_LOCK, self.vm.hazards, self.lock):
            if self.vm.hazards.xen_lock_locks_vcpus:
                for vcpu in self.vm.vcpus:  # broken: vcpu->mutex is outside xen_lock
                    with vcpu.mutex:
                        pass
            self.attrs[attr] = value

    def vcpu_set_attr(self, vcpu: Any, attr: str, value: int) -> None:
        """``KVM_XEN_VCPU_SET_ATTR``: a vCPU ioctl, ``vcpu->mutex`` held outside ``xen_lock``."""
        self._check(attr, ATTRS - VM_ATTRS, value)
        vcpu.mutex.assert_held()
        with unless(XEN_VCPU_ATTR_WITHOUT_XEN_LOCK, self.vm.hazards, self.lock):
            self.vcpu_attrs[(vcpu.id, attr)] = value
