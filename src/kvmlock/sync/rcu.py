"""RCU-protected pointers and the RCU read side, checked the way the kernel checks them.

A protected pointer may be read in two places: inside its read side (``rcu_read_lock`` or an
SRCU read lock), where the reader may keep what it saw until it leaves; or on the update side,
where the updaters' lock keeps the pointer from changing. Each accessor states which one it is
in, and under lockdep a read that is in neither -- outside the read side, the update-side
condition false -- is reported as "suspicious RCU usage" (kind ``suspicious_rcu``), once per
pointer and call site.

``cond`` is what the kernel's ``c`` argument is: usually ``lockdep.is_held(lock)``, or a
callable evaluated only when the read side is not held.

Under the explorer, publishing and reading the pointer are visible operations (two readers
commute, a reader and :meth:`RcuPointer.assign` do not); ``dereference_protected`` is not,
since its condition excludes every concurrent writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmlock import lockdep, runtime
from kvmlock.lockdep.protect import (
    RCU_READ_LOCK,
    check_lock,
    held_read,
    lock_map,
    lock_name,
    published,
    read_of,
    record,
    suspicious_rcu,
    unguarded,
)
from kvmlock.runtime import world as _world
from kvmlock.sync.srcu import GracePeriods

__all__ = ["RCU", "RcuPointer", "rcu_read_lock", "rcu_read_unlock"]

Cond = bool | Callable[[], object]


class _ReadSection:
    """What ``rcu_read_lock()`` returns: already inside; leaving a ``with`` block unlocks."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        rcu_read_unlock()


_SECTION = _ReadSection()


def rcu_read_lock() -> _ReadSection:
    """Enter an RCU read-side critical section (nests); ``rcu_read_unlock()`` leaves it.

    Also usable as ``with rcu_read_lock(): ...``. The section is a recursive read of the
    ``rcu_read_lock`` pseudo-lock, so it shows among the held locks of every report.
    """
    RCU_READ_LOCK.acquire(0, 2)
    return _SECTION


def rcu_read_unlock() -> None:
    RCU_READ_LOCK.release()


def _true(cond: Cond) -> bool:
    return bool(cond() if callable(cond) else cond)


class RcuPointer:
    """``__rcu`` pointer: published with :meth:`assign`, read with a checked dereference.

    ``name`` is what reports call the pointer (``"kvm->memslots"``). ``read_side`` (an SRCU, or
    ``"rcu_read_lock"``) and ``update_side`` (the lock that serialises its updaters) declare
    what protects it, as a locking document's Reference states it: ``kvmlock spec render``
    writes the Protects lines from them. A declared update side is also checked: a publication
    without it held is a report of kind ``unguarded``.
    """

    __slots__ = ("name", "read_side", "update_side", "_v", "_wq", "_seen")

    def __init__(self, value: Any = None, name: str = "rcu pointer", *,
                 read_side: Any = None, update_side: Any = None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"RcuPointer: the name must be a non-empty string, got {name!r}")
        if read_side == "rcu_read_lock":
            read_side = RCU_READ_LOCK
        if read_side is not None and lock_map(read_side) is None:
            raise TypeError(f"RcuPointer {name}: read_side must be an SRCU or 'rcu_read_lock', "
                            f"got {read_side!r}")
        if update_side is not None:
            check_lock(update_side)
        self.name = name
        self.read_side = read_side
        self.update_side = update_side
        self._v = value
        self._wq = runtime.active().waitq(self)
        self._seen: object = None  # the lockdep state this pointer was last recorded in

    def assign(self, value: Any) -> None:
        """``rcu_assign_pointer``: publish ``value``; readers from now on see it."""
        if _world().lockdep.on:
            published(self.name)
            up = self.update_side
            if up is not None and held_read(up) != 0:
                unguarded(self.name, lock_name(up), "write", how=held_read(up))
        wq = self._wq
        with wq:
            wq.point("rcu_assign_pointer")
            self._v = value

    def _load(self, label: str) -> Any:
        wq = self._wq
        with wq:
            wq.point(label, False)
            return self._v

    def _read_side_held(self, side: Any, cond: Cond, api: str) -> None:
        """Report unless the task is inside ``side``'s read side or ``cond`` holds."""
        w = _world()
        S = w.lockdep
        if not S.on:
            return
        m = lock_map(side)
        if m is None:
            raise TypeError(f"{api}: {side!r} is not an SRCU or the RCU read side")
        if self._seen is not S:
            record("rcu", self.name, m.name)
            self._seen = S
        if read_of(w, m) is None and not _true(cond):
            suspicious_rcu(self.name, api, m.name)

    def srcu_dereference_check(self, srcu: Any, cond: Cond) -> Any:
        """Read inside ``srcu``'s read side, or where ``cond`` holds (the update side)."""
        self._read_side_held(srcu, cond, "srcu_dereference_check()")
        return self._load("srcu_dereference")

    def srcu_dereference(self, srcu: Any) -> Any:
        """Read inside ``srcu``'s read side (``srcu_dereference``)."""
        self._read_side_held(srcu, False, "srcu_dereference_check()")
        return self._load("srcu_dereference")

    def rcu_dereference_check(self, cond: Cond) -> Any:
        """Read inside ``rcu_read_lock()``, or where ``cond`` holds."""
        self._read_side_held(RCU_READ_LOCK, cond, "rcu_dereference_check()")
        return self._load("rcu_dereference")

    def rcu_dereference(self) -> Any:
        """Read inside ``rcu_read_lock()`` (``rcu_dereference``)."""
        return self.rcu_dereference_check(False)

    def dereference_protected(self, cond: Cond) -> Any:
        """``rcu_dereference_protected``: an update-side read; ``cond`` must hold."""
        if not _true(cond) and _world().lockdep.on:
            suspicious_rcu(self.name, "rcu_dereference_protected()", "")
        return self._v

    def access_pointer(self) -> Any:
        """``rcu_access_pointer``: the value, unchecked, for comparing or testing it only."""
        return self._v

    def __repr__(self) -> str:
        return f"<RcuPointer {self.name} -> {self._v!r}>"


class RCU(GracePeriods):
    """The RCU read side with grace periods a program can wait for: SRCU's epochs, with the
    read side taken as ``rcu_read_lock`` (the one pseudo-lock every RCU reader holds, so
    :func:`~kvmlock.lockdep.rcu_read_lock_held` and :meth:`RcuPointer.rcu_dereference` see
    it) instead of a lock class of its own.

    The kernel has one RCU; a program keeps its readers on its own instance, so that two
    explorations (or two models) never wait for each other's readers. Entering and leaving
    the read side are visible steps under the explorer, as is the start of a grace period,
    so the explorer orders a reader's steps against an updater's unlink and free.

    Unlike ``synchronize_srcu``, ``synchronize`` validates no acquire against the locks held:
    the kernel's RCU takes no part in lockdep's dependencies (a task waiting for a grace
    period inside its own read side never returns: the explorer reports the hang).
    """

    KIND = "rcu"

    __slots__ = ()

    def _lock_map(self, name: str, key: object | None) -> Any:
        return RCU_READ_LOCK

    def synchronize(self) -> None:
        """``synchronize_rcu``: wait until every reader that entered before this call has
        left."""
        lockdep.might_sleep("synchronize_rcu")
        self._grace_period()

    call_rcu = GracePeriods.call_srcu
