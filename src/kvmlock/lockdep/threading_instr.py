"""Validate a plain threading program: ``threading.Lock``/``RLock`` made into checked locks.

While instrumentation is on, ``threading.Lock()`` and ``threading.RLock()`` return wrappers
that report to lockdep. Each creation site is one lock class, as each static initialisation
site is one class in the kernel: all locks made by the same call order the same way. The site
is file:line, plus the column, so two calls on one line make two classes. Locks made inside
threading.py (a ``Condition()``'s RLock, say) are named after the user line that asked for
them; locks made by kvmlock itself stay raw, since its primitives report on their own.
``RLock`` re-entry is not recursive locking. A ``Lock`` released by a thread other than its
taker (legal for threading.Lock) is dropped from the taker's stack silently. Threads started
while instrumentation is on are checked for locks still held when they end.
"""

from __future__ import annotations

import _thread
import linecache
import os
import re
import sys
import threading
from typing import Any

from kvmlock import runtime as _rt
from kvmlock.lockdep import api, core
from kvmlock.lockdep.where import _internal, short_path

_ORIG_LOCK = threading.Lock
_ORIG_RLOCK = threading.RLock
_THREADING_FILE = os.path.abspath(threading.__file__)
_get_ident = _thread.get_ident
_depth = 0
_maps: dict[tuple, core.LockMap] = {}


def _column(f: Any) -> int | None:
    """1-based column of the call being made in frame ``f`` (two locks made on one line by
    two calls are two classes; one call made in a loop is one class)."""
    try:
        positions = f.f_code.co_positions()
        for _ in range(f.f_lasti // 2):
            next(positions)
        col = next(positions)[2]
    except (StopIteration, AttributeError):
        return None
    return None if col is None else col + 1


def _site() -> tuple[str, int, int | None] | None:
    """Creation site for a new lock, or None when kvmlock itself is creating it."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if os.path.abspath(fn) == _THREADING_FILE:
            f = f.f_back
            continue
        if _internal(fn):
            return None
        return fn, f.f_lineno, _column(f)
    return None


_TARGET = re.compile(r"^\s*([A-Za-z_][\w.]*(?:\[[^\]=]*\])?)\s*(?::[^=]*)?=(?!=)")


def _class_name(site: tuple[str, int, int | None]) -> str:
    """``stock_lock@shop.py:7`` when the line assigns the new lock to one name (the way the
    kernel names a class after its lock's expression), else ``shop.py:7:15``."""
    fn, line, col = site
    where = f"{short_path(fn)}:{line}"
    text = linecache.getline(fn, line)
    m = _TARGET.match(text)
    if m and text.count("Lock(") == 1:
        return f"{m.group(1)}@{where}"
    return where + (f":{col}" if col else "")


def _map_for(what: str, site: tuple[str, int, int | None]) -> core.LockMap:
    key = (what, *site)
    m = _maps.get(key)
    if m is None:
        m = _maps[key] = core.LockMap(_class_name(site), "threading", key)
    return m


def _validated_acquire(lockmap: core.LockMap, lock: Any, blocking: bool, timeout: float) -> bool:
    """Take ``lock`` the way ``threading`` callers ask for it, telling lockdep.

    An unbounded wait is validated *before* it can block forever; a trylock or a bounded wait
    cannot deadlock, so it is recorded only once it succeeded and adds no dependency.
    """
    if blocking and timeout < 0:
        lockmap.acquire()
        try:
            lock.acquire()
        except BaseException:
            lockmap.release()
            raise
        return True
    if not lock.acquire(blocking, timeout):
        return False
    lockmap.acquire(trylock=True)
    return True


class CheckedLock:
    """A ``threading.Lock`` that reports every acquire and release to lockdep."""

    __slots__ = ("_lock", "_map", "_owner", "__weakref__")

    def __init__(self, lockmap: core.LockMap) -> None:
        self._lock = _ORIG_LOCK()
        self._map = lockmap
        self._owner: Any = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not _validated_acquire(self._map, self._lock, blocking, timeout):
            return False
        self._owner = _rt.current_task().lockdep
        return True

    __enter__ = acquire

    def release(self) -> None:
        owner = self._owner
        self._owner = None
        if owner is not None and owner is not _rt.current_task().lockdep:
            core.forget(self._map, owner)  # released by another thread: a signal, not a bug
        else:
            self._map.release()
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._owner = None

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<kvmlock CheckedLock {self._map.name} {state}>"


class CheckedRLock:
    """A ``threading.RLock`` whose first acquire (not its re-entries) goes to lockdep."""

    __slots__ = ("_lock", "_map", "_holder", "_count", "__weakref__")

    def __init__(self, lockmap: core.LockMap) -> None:
        self._lock = _ORIG_RLOCK()
        self._map = lockmap
        self._holder: int | None = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = _get_ident()
        if self._holder == me:
            self._lock.acquire()
            self._count += 1
            return True
        if not _validated_acquire(self._map, self._lock, blocking, timeout):
            return False
        self._holder = me
        self._count = 1
        return True

    __enter__ = acquire

    def release(self) -> None:
        if self._holder != _get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._holder = None
            self._map.release()
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # Condition support: wait() drops every level of the RLock and takes them back after.
    def _is_owned(self) -> bool:
        return self._holder == _get_ident()

    def _release_save(self) -> tuple[Any, int]:
        count = self._count
        self._count = 0
        self._holder = None
        self._map.release()
        return self._lock._release_save(), count

    def _acquire_restore(self, saved: tuple[Any, int]) -> None:
        state, count = saved
        self._map.acquire()
        self._lock._acquire_restore(state)
        self._holder = _get_ident()
        self._count = count

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._holder = None
        self._count = 0

    def __repr__(self) -> str:
        return f"<kvmlock CheckedRLock {self._map.name} count={self._count}>"


class _LockClass(type):
    """The type of the stand-in for ``threading.Lock``: calling it makes a lock (validated, or
    raw when kvmlock itself asks), and ``isinstance(x, threading.Lock)`` keeps working for
    plain and validated locks alike -- from Python 3.13 on ``threading.Lock`` is a class that
    programs may test against."""

    def __call__(cls) -> Any:
        site = _site()
        if site is None:
            return _ORIG_LOCK()
        return CheckedLock(_map_for("Lock", site))

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, (CheckedLock, _thread.LockType))

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, (CheckedLock, _thread.LockType))


class _lock_factory(metaclass=_LockClass):  # noqa: N801 - stands in for threading.Lock
    """``threading.Lock`` while instrumentation is on."""


def _rlock_factory(*args: Any, **kwargs: Any) -> Any:
    site = _site()
    if site is None:
        return _ORIG_RLOCK(*args, **kwargs)
    return CheckedRLock(_map_for("RLock", site))


_ORIG_BOOTSTRAP = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _bootstrap_inner(self: threading.Thread) -> None:
    """Every thread's last act: lockdep's end-of-task check (locks still held)."""
    try:
        _ORIG_BOOTSTRAP(self)
    finally:
        api.task_exit(self.name)  # by now the thread is no longer listed under its name


class Instrumentation:
    """Handle returned by :func:`instrument_threading`; ``stop()`` or leaving ``with`` undoes it."""

    def __init__(self) -> None:
        global _depth
        self._active = True
        if _depth == 0:
            threading.Lock = _lock_factory  # type: ignore[misc, assignment]
            threading.RLock = _rlock_factory  # type: ignore[misc, assignment]
            threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]
        _depth += 1

    def stop(self) -> None:
        global _depth
        if not self._active:
            return
        self._active = False
        _depth -= 1
        if _depth == 0:
            threading.Lock = _ORIG_LOCK  # type: ignore[misc]
            threading.RLock = _ORIG_RLOCK  # type: ignore[misc]
            threading.Thread._bootstrap_inner = _ORIG_BOOTSTRAP  # type: ignore[attr-defined]

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def instrument_threading() -> Instrumentation:
    """Make ``threading.Lock()``/``RLock()`` created from now on validated by lockdep.

    Use as a call (undo with ``.stop()``) or as ``with instrument_threading(): ...``. Locks
    created before, or through names imported earlier (``from threading import Lock``), stay
    plain.
    """
    return Instrumentation()


def threading_instrumented() -> bool:
    """Whether ``threading.Lock()`` currently returns validated locks."""
    return _depth > 0
