"""Kernel-style locking primitives that really block.

Each primitive has one implementation; the active runtime (real threads, or the explorer's
tasks) decides how it blocks and wakes, and lockdep validates every acquire before it can block.
A primitive's name is its lock class: all instances built with one name are one class to lockdep,
as all ``vcpu->mutex`` are one class in the kernel.
"""

from kvmlock.sync.atomic import Atomic64
from kvmlock.sync.mutex import Mutex, RawSpinLock, SpinLock
from kvmlock.sync.rcuwait import RCUWait
from kvmlock.sync.rwlock import RWLock
from kvmlock.sync.rwsem import CpuHotplugLock, RWSemaphore
from kvmlock.sync.srcu import SRCU

__all__ = [
    "Atomic64",
    "CpuHotplugLock",
    "Mutex",
    "RCUWait",
    "RWLock",
    "RWSemaphore",
    "RawSpinLock",
    "SRCU",
    "SpinLock",
]
