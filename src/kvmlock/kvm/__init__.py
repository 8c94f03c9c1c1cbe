"""An executable model of Linux KVM's locking design (Documentation/virt/kvm/locking.rst).

The model is written only against :mod:`kvmlock.sync`, so the same code runs on real threads
under lockdep and as cooperative tasks under :mod:`kvmlock.explore`.
"""

from kvmlock.kvm.vcpu import VCPU
from kvmlock.kvm.vm import VM, Hazards

__all__ = ["VCPU", "VM", "Hazards"]
