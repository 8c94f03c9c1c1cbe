"""Kernel-style locking primitives that really block.

Each primitive has one implementation; the active runtime (real threads, or the explorer's
tasks) decides how it blocks and wakes, and lockdep validates every acquire before it can block.
A primitive's name is its lock class: all instances built with one name are one class to lockdep,
as all ``vcpu->mutex`` are one class in the kernel.

What a lock protects is declared too: ``RcuPointer`` for pointers published to RCU/SRCU readers,
``guarded_by``/``Guarded`` for data a lock guards; lockdep reports every access without the
protection.
"""

from kvmlock.sync.atomic import Atomic64
from kvmlock.sync.guarded import Guarded, changed_in_place, data_racy, guarded_by, peek
from kvmlock.sync.mutex import Mutex, RawSpinLock, SpinLock
from kvmlock.sync.rcu import RCU, RcuPointer, rcu_read_lock, rcu_read_unlock
from kvmlock.sync.rcuwait import RCUWait
from kvmlock.sync.rwlock import RWLock
from kvmlock.sync.rwsem import CpuHotplugLock, RWSemaphore
from kvmlock.sync.srcu import SRCU

__all__ = [
    "Atomic64",
    "CpuHotplugLock",
    "Guarded",
    "Mutex",
    "RCU",
    "RCUWait",
    "RWLock",
    "RWSemaphore",
    "RawSpinLock",
    "SRCU",
    "RcuPointer",
    "SpinLock",
    "changed_in_place",
    "data_racy",
    "guarded_by",
    "peek",
    "rcu_read_lock",
    "rcu_read_unlock",
]
