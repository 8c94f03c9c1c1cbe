"""vCPU planes: one vCPU id, one ``kvm_vcpu`` per privilege plane, one ``vcpu->mutex`` each.

A VM with planes (a proposal for VTL-like privilege levels in the guest) has, for each vCPU
id, a vCPU in plane 0 and one in every other plane. They run on one userspace thread and
share plane 0's run state, so a path that needs two of them locks plane 0's ``vcpu->mutex``
first and the other plane's second. All of them are one lock class; the second is taken with
a nesting subclass (``mutex_lock_nested(&vcpu->mutex, 1)``) so that lockdep sees an ordered
pair rather than the class taken twice.

* :func:`plane_vcpu_set_config` -- an ioctl on a plane-N vCPU: plane 0's mutex, then its own.
* :func:`run_in_plane` -- ``KVM_RUN`` on plane 0 switching into plane N: plane 0's mutex (the
  ioctl's own) held, plane N's taken nested inside it.

The two ways to get this wrong are mutants declared here: the subclass forgotten (lockdep sees
the class taken recursively) and the plane-N ioctl locking its own mutex first, as every other
vCPU ioctl does, then plane 0's behind the subclass -- lockdep sees one consistent order of
classes (subclass 0, then 1) in both paths and stays silent; only the explorer's deadlock
shows that an annotation cannot make an inversion safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlock.kvm.mutants import mutant
from kvmlock.kvm.vcpu import VCPU

if TYPE_CHECKING:
    from kvmlock.sync import Mutex

__all__ = ["PlaneVcpu", "plane_vcpu_set_config", "run_in_plane"]

PLANE_MUTEX_UNANNOTATED = mutant(
    "plane_mutex_unannotated", removes="the nesting subclass of the second plane's vcpu->mutex",
    breaks="two vcpu->mutex instances nest only behind a lockdep subclass annotation")
PLANE_IOCTL_LOCKS_OWN_FIRST = mutant(
    "plane_ioctl_locks_own_first", removes="(adds) a plane-N vCPU ioctl locks its own "
    "vcpu->mutex before plane 0's",
    breaks="plane 0's vcpu->mutex is taken outside vcpu->mutex of the same id in another plane")


class PlaneVcpu(VCPU):
    """The vCPU of id ``vcpu.id`` in plane ``plane`` (> 0); ``plane0`` is plane 0's vCPU."""

    def __init__(self, plane0: VCPU, plane: int) -> None:
        if not isinstance(plane, int) or isinstance(plane, bool) or plane < 1:
            raise ValueError(f"a plane vCPU lives in plane 1 or above, got {plane!r}")
        super().__init__(plane0.vm, plane0.id)
        self.plane0 = plane0
        self.plane = plane
        self.name = f"vcpu{plane0.id}.plane{plane}"


def _lock_second(vcpu: PlaneVcpu, mutex: Mutex) -> None:
    """Take the second ``vcpu->mutex`` of a plane pair, with its subclass annotation."""
    if PLANE_MUTEX_UNANNOTATED in vcpu.vm.hazards:
        mutex.lock()  # broken: the class taken again, unannotated
    else:
        mutex.lock(subclass=1)


def plane_vcpu_set_config(vcpu: PlaneVcpu, key: str, value: int) -> None:
    """An ioctl on a plane-N vCPU: plane 0's ``vcpu->mutex`` first, then its own."""
    first, second = vcpu.plane0.mutex, vcpu.mutex
    if PLANE_IOCTL_LOCKS_OWN_FIRST in vcpu.vm.hazards:
        first, second = second, first  # broken: plane 0's taken inside plane N's
    first.lock()
    _lock_second(vcpu, second)
    try:
        vcpu.config[key] = value
        vcpu.plane0.config[f"plane{vcpu.plane}.{key}"] = value
    finally:
        second.unlock()
        first.unlock()


def run_in_plane(vcpu: PlaneVcpu, handle: Callable[[PlaneVcpu], object]) -> None:
    """``KVM_RUN`` on plane 0 that switches into ``vcpu``'s plane and handles one exit there."""
    p0 = vcpu.plane0
    with p0.mutex:
        _lock_second(vcpu, vcpu.mutex)
        try:
            handle(vcpu)
        finally:
            vcpu.mutex.unlock()
