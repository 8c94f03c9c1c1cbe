"""Validate a plain threading program: ``threading.Lock``/``RLock`` made into checked locks.

While instrumentation is on, ``threading.Lock()`` and ``threading.RLock()`` return wrappers
that report to lockdep and otherwise behave as the real locks do, observably: the same
results, errors, timeouts, repr, pickling refusal and the private methods the standard
library calls (``_is_owned``, ``_release_save``, ``_acquire_restore``, ``_recursion_count``,
``_at_fork_reinit``). Each creation site is one lock class (see :mod:`.naming`); locks made
inside threading.py (a ``Condition()``'s RLock, say) belong to the user line that asked for
them; locks made by kvmlock itself stay raw, since its primitives report on their own.

Each lock has its own LockMap, so lockdep can tell two locks of one class apart: nesting
different instances of one class is validated instance by instance (see validate.py).
``RLock`` re-entry is not recursive locking. A ``Lock`` is also a signal: a thread other than
its taker may release it, and a thread that blocks on a lock it took itself is waiting for
such a release -- lockdep reports that as recursive locking only if no release comes within
``SIGNAL_WAIT`` seconds and the class was never seen used as a signal. Threads started while
instrumentation is on are checked for locks still held when they end.
"""

from __future__ import annotations

import _thread
import os
import re
import sys
import threading
from typing import Any

from kvmlock import runtime as _rt
from kvmlock.lockdep import api, core
from kvmlock.lockdep.naming import class_name, site_key, site_of
from kvmlock.lockdep.state import SIGNAL_CLASSES
from kvmlock.lockdep.where import _internal, taken_here

_ORIG_LOCK = threading.Lock
_ORIG_RLOCK = threading.RLock
_THREADING_FILE = os.path.abspath(threading.__file__)
_get_ident = _thread.get_ident
_depth = 0
#: How long a thread blocked on a Lock it holds itself waits for another thread's release
#: before lockdep calls it a self-deadlock.
SIGNAL_WAIT = 2.0
_signal_classes = SIGNAL_CLASSES  # keys of Lock classes seen released by a non-taker


def _site(depth: int = 2) -> Any:
    """Creation site for a new lock, or None when kvmlock itself is creating it."""
    f = sys._getframe(depth)
    while f is not None:
        fn = f.f_code.co_filename
        if os.path.abspath(fn) == _THREADING_FILE:
            f = f.f_back
            continue
        if _internal(fn):
            return None
        return site_of(f)
    return None


def _new_map(what: str, site: Any) -> core.LockMap:
    key = site_key(what, site)
    return core.LockMap(class_name(key, site), "threading", key)


def _held() -> Any:
    return _rt.current_task().lockdep


def _validated_acquire(lockmap: core.LockMap, lock: Any, blocking: Any, timeout: Any) -> bool:
    """Take ``lock`` the way ``threading`` callers ask for it, telling lockdep.

    An unbounded wait is validated *before* it can block forever; a trylock or a bounded wait
    cannot deadlock, so it is recorded only once it succeeded and adds no dependency. The
    arguments go to the real lock unchanged, so bad ones raise what they raise there.
    """
    if blocking and timeout == -1 and timeout.__class__ in (int, float):
        lockmap.acquire(0, 0, False, taken_here(3))  # (the caller of the lock's acquire)
        try:
            lock.acquire()
        except BaseException:
            lockmap.release()
            raise
        return True
    if not lock.acquire(blocking, timeout):
        return False
    lockmap.acquire(0, 0, True, taken_here(3))
    return True


def _drop(lockmap: core.LockMap, owner: Any) -> None:
    """Take a lock off the stack it was pushed on, from whichever thread this runs in."""
    if owner is _held():
        lockmap.release()
    else:
        core.forget(lockmap, owner)


def _cannot_create(real: type) -> TypeError:
    """The error of ``type(lock)()``, naming the type the program thinks it has."""
    return TypeError(f"cannot create '{real.__module__}.{real.__name__}' instances")


class CheckedLock:
    """A ``threading.Lock`` that reports every acquire and release to lockdep."""

    __slots__ = ("_lock", "_map", "_owner", "__weakref__")

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        if _LOCK_IS_CLASS:
            return _make_lock(args, kwargs, 3)  # type(threading.Lock())() is a new Lock
        raise _cannot_create(type(_ORIG_LOCK()))  # as type(threading.Lock())() does

    @classmethod
    def _make(cls, lockmap: core.LockMap) -> CheckedLock:
        self = object.__new__(cls)
        self._lock = _ORIG_LOCK()
        self._map = lockmap
        self._owner = None  # the held stack this lock was pushed on
        return self

    def acquire(self, blocking: Any = True, timeout: Any = -1) -> bool:
        owner = self._owner
        if owner is not None and blocking and timeout == -1 and owner is _held():
            return self._wait_for_signal()
        if not _validated_acquire(self._map, self._lock, blocking, timeout):
            return False
        self._owner = _held()
        return True

    def _wait_for_signal(self) -> bool:
        """This thread blocks on a lock it holds: only another thread's release can free
        it (a signal). Give that release a moment before calling it a self-deadlock."""
        m = self._map
        if not self._lock.acquire(True, SIGNAL_WAIT):
            if m.key not in _signal_classes:
                m.acquire()  # still stuck: the recursive-locking report, then wait for real
                try:
                    self._lock.acquire()
                except BaseException:
                    m.release()
                    raise
                self._owner = _held()
                return True
            self._lock.acquire()
        _signal_classes.add(m.key)
        m.acquire()  # released by another thread (which dropped the old hold): a new hold
        self._owner = _held()
        return True

    __enter__ = acquire  # (as on a real lock, where __enter__ takes acquire's arguments)

    def release(self) -> None:
        if not self._lock.locked():
            self._lock.release()  # raises the RuntimeError a plain lock raises
        owner = self._owner
        self._owner = None
        if owner is not None:
            if owner is not _held():
                _signal_classes.add(self._map.key)
            _drop(self._map, owner)
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    acquire_lock = acquire
    release_lock = release

    def locked(self) -> bool:
        return self._lock.locked()

    locked_lock = locked

    def _at_fork_reinit(self) -> None:
        owner = self._owner
        self._owner = None
        if owner is not None:
            core.forget(self._map, owner)
        self._lock._at_fork_reinit()

    def __del__(self) -> None:
        owner = self._owner
        if owner is not None:  # collected while held: no release will ever come
            core.forget(self._map, owner)

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError("cannot pickle '_thread.lock' object")

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<{state} _thread.lock object at {hex(id(self))}>"


class CheckedRLock:
    """A ``threading.RLock`` whose first acquire (not its re-entries) goes to lockdep."""

    __slots__ = ("_lock", "_map", "_holder", "_count", "_owner", "__weakref__")

    def __new__(cls, *args: object, **kwargs: object) -> Any:
        return _make_rlock(args, kwargs, 3)  # type(threading.RLock())() is a new RLock

    @classmethod
    def _make(cls, lockmap: core.LockMap, lock: Any = None) -> CheckedRLock:
        """A new checked RLock; ``lock``: the raw RLock to wrap (an adopted module lock)."""
        self = object.__new__(cls)
        self._lock = _ORIG_RLOCK() if lock is None else lock
        self._map = lockmap
        self._holder: int | None = None
        self._count = 0
        self._owner = None
        return self

    def acquire(self, blocking: Any = True, timeout: Any = -1) -> bool:
        me = _get_ident()
        if self._holder == me:
            if not self._lock.acquire(blocking, timeout):  # same arguments, same errors
                return False
            self._count += 1
            return True
        if not _validated_acquire(self._map, self._lock, blocking, timeout):
            return False
        self._holder = me
        self._count = 1
        self._owner = _held()
        return True

    __enter__ = acquire

    def release(self) -> None:
        if self._holder != _get_ident():
            if self._lock._is_owned():  # an adopted lock taken through its raw self before
                self._lock.release()  # the swap (see adopt_module_locks): let it go as such
                return
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._holder = None
            owner, self._owner = self._owner, None
            if owner is not None:
                _drop(self._map, owner)
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # Condition support: wait() drops every level of the RLock and takes them back after.
    def _is_owned(self) -> bool:
        return self._holder == _get_ident()

    def _recursion_count(self) -> int:
        return self._count if self._holder == _get_ident() else 0

    def _release_save(self) -> tuple[Any, int]:
        if self._holder != _get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        count = self._count
        self._count = 0
        self._holder = None
        owner, self._owner = self._owner, None
        if owner is not None:
            _drop(self._map, owner)
        return self._lock._release_save(), count

    def _acquire_restore(self, saved: tuple[Any, int]) -> None:
        state, count = saved
        self._map.acquire()
        try:
            self._lock._acquire_restore(state)
        except BaseException:
            self._map.release()
            raise
        self._holder = _get_ident()
        self._count = count
        self._owner = _held()

    def _at_fork_reinit(self) -> None:
        owner = self._owner
        self._owner = None
        if owner is not None:
            core.forget(self._map, owner)
        self._lock._at_fork_reinit()
        self._holder = None
        self._count = 0

    def __del__(self) -> None:
        owner = self._owner
        if owner is not None:
            core.forget(self._map, owner)

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError("cannot pickle '_thread.RLock' object")

    def __repr__(self) -> str:
        state = "locked" if self._count else "unlocked"
        return (f"<{state} _thread.RLock object owner={self._holder or 0} "
                f"count={self._count} at {hex(id(self))}>")


class _LockClass(type):
    """The type of the stand-in for ``threading.Lock``: calling it makes a lock (validated, or
    raw when kvmlock itself asks), and ``isinstance(x, threading.Lock)`` keeps working for
    plain and validated locks alike -- from Python 3.13 on ``threading.Lock`` is a class that
    programs may test against."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _make_lock(args, kwargs, 3)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, (CheckedLock, _thread.LockType))

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, (CheckedLock, _thread.LockType))


class _lock_factory(metaclass=_LockClass):  # noqa: N801 - stands in for threading.Lock
    """``threading.Lock`` while instrumentation is on."""


def _rlock_factory(*args: Any, **kwargs: Any) -> Any:
    return _make_rlock(args, kwargs, 3)


#: CPython 3.13 made ``threading.Lock`` the class ``_thread.lock``, which can be instantiated
#: (``type(lock)()`` is a new lock); up to 3.12 it is a function and the type refuses.
_LOCK_IS_CLASS = isinstance(_ORIG_LOCK, type)


def _make_lock(args: tuple, kwargs: dict, depth: int) -> Any:
    site = _site(depth)
    if site is None or args or kwargs:
        return _ORIG_LOCK(*args, **kwargs)  # (bad arguments raise what they raise there)
    return CheckedLock._make(_new_map("Lock", site))


def _make_rlock(args: tuple, kwargs: dict, depth: int) -> Any:
    site = _site(depth)
    if site is None or args or kwargs:
        return _ORIG_RLOCK(*args, **kwargs)  # (bad arguments raise what they raise there)
    return CheckedRLock._make(_new_map("RLock", site))


# Stand-ins carry the replaced objects' names, so code that inspects threading (its __all__,
# help(), pickling by reference) sees what it would see without instrumentation. The
# instrumented lock's type is named as the real one too: CPython's own tests build the
# expected "cannot create" message from type(lock).__module__ and __name__.
CheckedLock.__module__ = type(_ORIG_LOCK()).__module__
CheckedLock.__name__ = CheckedLock.__qualname__ = type(_ORIG_LOCK()).__name__
for _fake, _real in ((_lock_factory, _ORIG_LOCK), (_rlock_factory, _ORIG_RLOCK)):
    for _attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(_fake, _attr, getattr(_real, _attr))
        except (AttributeError, TypeError):
            pass


_ORIG_BOOTSTRAP = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _bootstrap_inner(self: threading.Thread) -> None:
    """Every thread's last act: lockdep's end-of-task check (locks still held)."""
    try:
        _ORIG_BOOTSTRAP(self)
    finally:
        api.task_exit(self.name)  # by now the thread is no longer listed under its name


# Installed once, for good: a thread however it uses kvmlock (its primitives, or instrumented
# threading locks) is checked for locks still held when it ends. A thread that took none pays
# one attribute test.
if not getattr(threading.Thread._bootstrap_inner, "_kvmlock", False):  # type: ignore[attr-defined]
    _bootstrap_inner._kvmlock = True  # type: ignore[attr-defined]
    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]


#: Module locks the standard library makes at import, before instrumentation can see them,
#: that take part in real deadlocks: logging's module lock is one side of the inversion
#: between ``FileHandler.close()`` and ``dictConfig()``. ``(module, attribute)``.
ADOPTED = (("logging", "_lock"),)
_adopted: list[tuple[Any, str, Any, CheckedRLock]] = []
_RAW_RLOCK_TYPE = type(_ORIG_RLOCK())


def _module_site(mod: Any, attr: str) -> Any:
    """The creation site of ``mod.attr`` read off the module's source: the line assigning it
    a lock, as the site a lock made there under instrumentation would have had."""
    import linecache

    fn = getattr(mod, "__file__", None)
    if not fn:
        return None
    pat = re.compile(rf"^{re.escape(attr)}\s*=\s*((?:\w+\.)*R?Lock)\s*\(")
    for i, line in enumerate(linecache.getlines(fn), 1):
        m = pat.match(line)
        if m:
            return fn, i, m.start(1) + 1, "<module>"
    return None


def adopt_module_locks() -> None:
    """Validate the module locks of :data:`ADOPTED` that already exist: each becomes a checked
    RLock wrapping the very same raw lock (so mutual exclusion is unchanged, even with a thread
    that fetched the raw one just before), of the class its creation line would have had.
    One held right now is left alone: nobody could tell lockdep of its release."""
    for modname, attr in ADOPTED:
        mod = sys.modules.get(modname)
        raw = getattr(mod, attr, None)
        if type(raw) is not _RAW_RLOCK_TYPE or not raw.acquire(False):
            continue
        try:
            site = _module_site(mod, attr)
            if raw._recursion_count() != 1 or site is None:
                continue  # this thread holds it itself, or its line cannot be found
            checked = CheckedRLock._make(_new_map("RLock", site), raw)
            setattr(mod, attr, checked)
            _adopted.append((mod, attr, raw, checked))
        finally:
            raw.release()


def _give_back_module_locks() -> None:
    while _adopted:
        mod, attr, raw, checked = _adopted.pop()
        if getattr(mod, attr, None) is checked:
            setattr(mod, attr, raw)


_ORIG_START_NEW_THREAD = _thread.start_new_thread


class _ThreadBody:
    """What a ``_thread.start_new_thread`` thread runs: the function, then lockdep's end-of-task
    check. Its repr is the function's, so an exception the thread dies of is reported as
    "Exception ignored in thread started by: <the function>", as without kvmlock."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        fn = self.fn
        me = _get_ident()
        api.STARTED[me] = getattr(fn, "__qualname__", None) or repr(fn)
        try:
            fn(*args, **kwargs)
        finally:
            api.task_exit(api.STARTED.pop(me, None))

    def __repr__(self) -> str:
        return repr(self.fn)


def _start_new_thread(function: Any, args: Any, kwargs: Any = None) -> int:
    """``_thread.start_new_thread``, checked for locks still held when the thread ends."""
    if not callable(function) or not isinstance(args, tuple) or not (
            kwargs is None or isinstance(kwargs, dict)):
        return _ORIG_START_NEW_THREAD(function, args, *(() if kwargs is None else (kwargs,)))
    return _ORIG_START_NEW_THREAD(_ThreadBody(function), args, kwargs or {})


# Also for good: threads started without threading (``threading`` keeps its own reference to
# the original, so its threads are not wrapped twice).
if getattr(_thread.start_new_thread, "__name__", "") != "_start_new_thread":
    _start_new_thread.__doc__ = _ORIG_START_NEW_THREAD.__doc__
    _thread.start_new_thread = _thread.start_new = _start_new_thread  # type: ignore[assignment]


class Instrumentation:
    """Handle returned by :func:`instrument_threading`; ``stop()`` or leaving ``with`` undoes it."""

    def __init__(self) -> None:
        global _depth
        self._active = True
        if _depth == 0:
            threading.Lock = _lock_factory  # type: ignore[misc, assignment]
            threading.RLock = _rlock_factory  # type: ignore[misc, assignment]
            # Only now: importing asyncio imports logging, whose module lock must be validated
            # (it is one side of logging's FileHandler.close() / dictConfig() inversion).
            from kvmlock.lockdep import asyncio_instr

            asyncio_instr.patch()
            adopt_module_locks()
        _depth += 1

    def stop(self) -> None:
        global _depth
        if not self._active:
            return
        self._active = False
        _depth -= 1
        if _depth == 0:
            from kvmlock.lockdep import asyncio_instr

            asyncio_instr.unpatch()
            _give_back_module_locks()
            threading.Lock = _ORIG_LOCK  # type: ignore[misc]
            threading.RLock = _ORIG_RLOCK  # type: ignore[misc]

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def instrument_threading() -> Instrumentation:
    """Make ``threading.Lock()``/``RLock()`` (and ``asyncio.Lock``, ``Condition``, binary
    ``Semaphore``) created from now on validated by lockdep.

    Use as a call (undo with ``.stop()``) or as ``with instrument_threading(): ...``. Locks
    created before, or through names imported earlier (``from threading import Lock``), stay
    plain.
    """
    return Instrumentation()


def threading_instrumented() -> bool:
    """Whether ``threading.Lock()`` currently returns validated locks."""
    return _depth > 0
