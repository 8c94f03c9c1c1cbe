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

from kvmlock.sync._rw import ReadWriteLock


class RWLock(ReadWriteLock):
    KIND = "rwlock"
    SLEEPS = False
    __slots__ = ()
