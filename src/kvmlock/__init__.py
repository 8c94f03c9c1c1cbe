"""kvmlock: kernel-style locking for Python, checked the way the kernel checks it.

``kvmlock.sync`` has the primitives, ``kvmlock.lockdep`` the validator, ``kvmlock.explore`` the
schedule explorer, ``kvmlock.kvm`` the executable model of KVM's locking and ``kvmlock.spec``
the reader of locking.rst-style documents.
"""

from kvmlock.runtime import spawn

__all__ = ["spawn"]
__version__ = "0.1.0"
