"""Exclusive locks: mutex, spinlock_t and raw_spinlock_t.

All three block the same way here (an OS lock, or a parked task under the explorer); what
differs is what lockdep knows of them: a mutex may sleep, so taking one inside a spinlock's
critical section is reported, and sleeping while holding a spinlock is too.
"""

from __future__ import annotations

from kvmlock import lockdep, runtime
from kvmlock.sync._common import Nested, add_irq_forms, check_name, check_subclass


class _Exclusive:
    KIND = "mutex"

    __slots__ = ("name", "_map", "_cell", "__weakref__")

    def __init__(self, name: str, *, key: object | None = None) -> None:
        self.name = check_name(name, type(self).__name__)
        self._map = lockdep.LockMap(name, self.KIND, key)
        self._cell = runtime.active().lock_cell(self, name)

    # The hot path: validation first (a deadlock is reported before it can hang), then block.
    def __enter__(self) -> _Exclusive:
        self._map.lock()
        self._cell.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        # The real unlock first: the critical section ends as early as it can (under
        # contention every bytecode inside it is paid by all the waiters), and a lockdep report
        # raised by the bookkeeping below never leaves the lock held.
        try:
            self._cell.release()
        except RuntimeError:
            pass  # unlock of an unlocked lock: lockdep reports it just below
        self._map.release()

    def lock(self, subclass: int = 0) -> None:
        """Take the lock; ``subclass`` > 0 is the nesting annotation (``mutex_lock_nested``)."""
        if subclass:
            self._map.acquire(check_subclass(subclass))
        else:
            self._map.lock()
        self._cell.acquire()

    def lock_nest(self, nest_lock: _Exclusive) -> None:
        """``mutex_lock_nest_lock``: many locks of this class may be taken in any order while
        ``nest_lock`` is held (KVM takes every ``vcpu->mutex`` under ``kvm->lock`` this way)."""
        if not isinstance(nest_lock, _Exclusive):
            raise TypeError(f"lock_nest: nest_lock must be a Mutex/SpinLock, got {nest_lock!r}")
        self._map.acquire_nest(nest_lock._map)
        self._cell.acquire()

    unlock = __exit__

    def trylock(self) -> bool:
        """Never blocks and adds no dependency (lockdep records trylocks as held only)."""
        if self._cell.acquire(False):
            self._map.acquire(0, 0, True)
            return True
        return False

    def nested(self, subclass: int) -> Nested:
        return Nested(self, subclass)

    def assert_held(self) -> None:
        """``lockdep_assert_held``: reports "not_held" when the current task lacks the lock."""
        self._map.assert_held()

    def locked(self) -> bool:
        return self._cell.locked()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Mutex(_Exclusive):
    """``struct mutex``: sleeps when contended."""

    KIND = "mutex"
    __slots__ = ()


@add_irq_forms
class SpinLock(_Exclusive):
    """``spinlock_t``: its critical section must not sleep. ``with sl.irqsave():``,
    ``sl.irq()``, ``sl.bh()`` and ``flags = sl.lock_irqsave(); sl.unlock_irqrestore(flags)``
    (``lock_irq``, ``lock_bh``...) take it with interrupts (bottom halves) off, as a lock
    also taken by a handler must be."""

    KIND = "spinlock"
    __slots__ = ()


@add_irq_forms
class RawSpinLock(_Exclusive):
    """``raw_spinlock_t``: a spinlock that stays spinning even on PREEMPT_RT."""

    KIND = "raw_spinlock"
    __slots__ = ()
