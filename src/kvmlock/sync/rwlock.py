"""``rwlock_t``: many readers or one writer.

By default a reader gets in whenever no writer *holds* the lock, even if a writer is waiting;
that is what makes a reader recursive (it may nest inside another reader of the same lock
without deadlock), and it is why lockdep gives rwlock readers the recursive-read edge kind.

``queued=True`` models x86's queued rwlock as seen from process context: a waiting writer shuts
new readers out, so readers are *not* recursive and lockdep records them as plain shared
readers (the kernel's ``read_lock_is_recursive()`` is false there; only interrupt-context
readers jump the queue).
"""

from __future__ import annotations

from kvmlock.sync._common import add_irq_forms
from kvmlock.sync._rw import ReadWriteLock


class RWLock(ReadWriteLock):
    """``rwlock_t``. The kernel's interrupt-disabling forms: ``with rw.read_irqsave():``,
    ``read_irq()``, ``read_bh()`` and ``write_...`` alike (also ``rw.read().irqsave()``), and
    ``flags = rw.read_lock_irqsave(); rw.read_unlock_irqrestore(flags)``,
    ``read_lock_irq``/``read_unlock_irq``, ``write_lock_bh``/``write_unlock_bh``..."""

    KIND = "rwlock"
    SLEEPS = False
    __slots__ = ()


add_irq_forms(RWLock, "read_lock", "read_unlock", "read_")
add_irq_forms(RWLock, "write_lock", "write_unlock", "write_")
