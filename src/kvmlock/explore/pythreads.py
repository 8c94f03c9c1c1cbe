"""Plain ``threading`` code under the explorer, unmodified.

While an exploration runs, the names a threading program reaches for are replaced by explored
equivalents: ``threading.Lock``/``RLock`` (and the lock ``Condition`` makes its waiters of),
``Thread.start``/``join``/``is_alive``, ``current_thread``/``get_ident``, ``local``,
``time.sleep``, the ``queue`` classes' operations (``pyqueue.py``: each one visible operation
with the dependence its semantics allows) and the lock ``ThreadPoolExecutor`` shares between
pools. ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Barrier``, ``Timer`` and
``concurrent.futures`` are written in Python on top of those, so they follow without being
replaced themselves.

The replacements are process-wide attributes, so each one first asks whether the calling OS
thread is exploring; any other thread gets what was there before (the real lock, or lockdep's
validated one). They are installed for the length of one ``check``/``replay`` and taken out on
every way out. Names a program bound before the exploration (``from threading import Lock``)
are swapped in the body's module for the same span.

A lock acquire or release is one visible operation, exactly as for a ``kvmlock.sync.Mutex``,
and lockdep names each lock class after its creation site the way ``kvmlock lockdep`` does.
A wait with a timeout may time out: it is modelled as a trylock, so the strategy explores both
"the lock came in time" and "it did not". ``time.sleep`` is a read-only visible operation: a
task polling in a sleep loop yields to the others (spin detection) instead of spinning forever.
"""

from __future__ import annotations

import _thread
import itertools
import operator
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kvmlock.explore.records import _made as _records
from kvmlock.explore.records import _record
from kvmlock.explore.runtime import ACQ_NONE, ACQ_TRY, SimCell, SimRuntime, Task
from kvmlock.lockdep import core as _core
from kvmlock.lockdep import threading_instr as _instr
from kvmlock.lockdep.naming import class_name, site_key, site_of
from kvmlock.lockdep.where import _internal

#: The explored runtime of the calling OS thread, while it runs an execution.
_bound = threading.local()


def current_rt() -> SimRuntime | None:
    """The explored runtime of the calling OS thread, or None outside an execution. (The
    replacements below read ``_bound`` themselves: one call fewer, and under ``memory=True``
    one trace event fewer, in every thread start, join and lock made.)"""
    return getattr(_bound, "rt", None)


class _Sleep:
    """The object every ``time.sleep`` reads: sleeps commute with each other and with all else."""

    name = "sleep"


_SLEEP = _Sleep()


# --------------------------------------------------------------------------- locks
def _check_acquire_args(blocking: object, timeout: object) -> None:
    """Refuse what a real lock's ``acquire`` refuses, with its words: a program that passes a
    bad timeout must fail the same way explored as it does when run."""
    if timeout is None or timeout == -1:
        return
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0:  # type: ignore[operator]
        raise ValueError("timeout value must be positive")


class ExploredCell:
    """``threading``'s lock protocol (``acquire(blocking, timeout)``) on an explorer cell."""

    __slots__ = ("_cell",)

    def __init__(self, rt: SimRuntime, owner: object, label: str) -> None:
        self._cell: SimCell = rt.lock_cell(owner, label)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        cell = self._cell
        if blocking and (timeout is None or timeout == -1):
            return cell.acquire(True)
        _check_acquire_args(blocking, timeout)
        # A bounded wait ends either way: taken now, or timed out. Both are explored.
        rt = cell.rt
        t = rt.current
        rt.visible(t, cell.key, "trylock", True, None, cell.label, ACQ_TRY, cell)
        if cell.holder is not None:
            t.try_ok = False
            if timeout is not None and timeout > 0:
                _states(rt)["clock"] += timeout  # the wait ran out: its time passed
            return False
        t.try_ok = True
        cell.holder = t
        return True

    __enter__ = acquire

    def release(self) -> None:
        self._cell.release()

    def __exit__(self, *exc: object) -> None:
        self._cell.release()

    def locked(self) -> bool:
        return self._cell.holder is not None

    def _at_fork_reinit(self) -> None:
        self._cell.holder = None

    def __repr__(self) -> str:
        return f"<explored lock {self._cell.label}>"


class ExploredLock(_instr.CheckedLock):
    """``threading.Lock()`` inside an exploration: lockdep's checked lock on an explorer cell."""

    __slots__ = ()

    def _is_owned(self) -> bool:
        # Condition asks this of its lock; answering without a trylock keeps the trace short.
        return self._lock._cell.holder is _cur()

    def __repr__(self) -> str:
        return f"<explored Lock {self._map.name} {'locked' if self.locked() else 'unlocked'}>"


class PlainExploredLock(ExploredCell):
    """``threading.Lock()`` in an exploration with lockdep off: the explorer's cell alone.

    Nothing would read what lockdep found, and validating every acquire anyway was most of
    what a lock operation cost; a deadlock still names the locks each task holds (from the
    cells' holders)."""

    __slots__ = ("__weakref__",)

    def _is_owned(self) -> bool:
        return self._cell.holder is _cur()

    def __repr__(self) -> str:
        return (f"<explored Lock {self._cell.label} "
                f"{'locked' if self._cell.holder is not None else 'unlocked'}>")


class ExploredRLock:
    """``threading.RLock()`` inside an exploration; re-entry is counted, not a lock operation."""

    __slots__ = ("_lock", "_map", "_owner", "_count", "__weakref__")

    def __init__(self, lock: ExploredCell, lockmap: _core.LockMap | None) -> None:
        self._lock = lock
        self._map = lockmap
        self._owner: Task | None = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = _cur()
        if self._owner is me:
            if timeout != -1:
                _check_acquire_args(blocking, timeout)  # checked before re-entry, as CPython does
            self._count += 1
            return True
        if self._map is None:
            if not self._lock.acquire(blocking, timeout):
                return False
        elif not _instr._validated_acquire(self._map, self._lock, blocking, timeout):
            return False
        self._owner = me
        self._count = 1
        return True

    __enter__ = acquire

    def release(self) -> None:
        if self._owner is not _cur():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            if self._map is not None:
                self._map.release()
            self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _is_owned(self) -> bool:
        return self._owner is _cur()

    def _recursion_count(self) -> int:
        # multiprocessing asks this of an RLock; a thread that does not own it sees 0
        return self._count if self._owner is _cur() else 0

    def _release_save(self) -> tuple[Task | None, int]:
        saved = (self._owner, self._count)
        self._count = 0
        self._owner = None
        if self._map is not None:
            self._map.release()
        self._lock.release()
        return saved

    def _acquire_restore(self, saved: tuple[Task | None, int]) -> None:
        if self._map is None:
            self._lock.acquire()
        else:
            _instr._validated_acquire(self._map, self._lock, True, -1)
        self._owner, self._count = saved

    def _at_fork_reinit(self) -> None:
        self._owner = None
        self._count = 0

    def __repr__(self) -> str:
        name = self._map.name if self._map is not None else "RLock"
        return f"<explored RLock {name} count={self._count}>"


_THREADING_FILE = threading.__file__
_THREAD_RUN = threading.Thread.run
_THREAD_INIT = threading.Thread.__init__.__code__
_sites: dict[tuple, Any] = {}  # (code, instruction) of the creating call -> its lockdep site


def _site(depth: int = 0) -> Any:
    """lockdep's creation site of the lock being made (as ``kvmlock lockdep`` names it), or
    None when kvmlock itself makes it; remembered per calling instruction, since working out
    a call's column is costly and every execution makes its locks again. (``depth``: frames
    more between the caller and the maker it reports for.)"""
    f = sys._getframe(2 + depth)
    while f is not None and f.f_code.co_filename == _THREADING_FILE:
        f = f.f_back
    if f is None:
        return None
    key = (f.f_code, f.f_lasti)
    site = _sites.get(key, _sites)
    if site is _sites:
        site = _sites[key] = None if _internal(f.f_code.co_filename) else site_of(f)
    return site


def _plain_name(what: str, site: Any) -> str:
    """The lockdep class name a lock made at ``site`` has, without making its class."""
    return class_name(site_key(what, site), site)


def _validating(rt: SimRuntime) -> bool:
    """Whether lockdep's findings count in this execution (``check(lockdep=...)``)."""
    return not getattr(rt, "_kvmlock_plain", False)


def _cur() -> Task | None:
    rt = getattr(_bound, "rt", None)
    return rt.current if rt is not None else None


def _make_lock(prev: Callable[[], Any]) -> Callable[[], Any]:
    class _LockType(type):
        def __call__(cls) -> Any:
            rt = getattr(_bound, "rt", None)
            if rt is None:
                return prev()
            if sys._getframe(2).f_code is _THREAD_INIT:
                # the Event every Thread makes for its start: an explored thread's start sets
                # it without a lock operation and nothing explored waits on it, so a real
                # lock does (an explored one cost a cell and a lockdep class per thread)
                return _thread.allocate_lock()
            site = _site()
            if site is None:
                return prev()
            if not _validating(rt):
                plain = PlainExploredLock.__new__(PlainExploredLock)
                plain._cell = rt.lock_cell(plain, _plain_name("Lock", site))
                return plain
            lock = ExploredLock._make(_instr._new_map("Lock", site))
            lock._lock = ExploredCell(rt, lock, lock._map.name)
            return lock

        def __instancecheck__(cls, obj: object) -> bool:
            return isinstance(obj, (ExploredLock, PlainExploredLock, _instr.CheckedLock,
                                    _thread.LockType))

    class Lock(metaclass=_LockType):  # noqa: D401 - stands in for threading.Lock
        """``threading.Lock``: explored inside an exploration, the previous one elsewhere."""

    return Lock


def _make_rlock(prev: Callable[..., Any]) -> Callable[..., Any]:
    def RLock(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands in for threading.RLock
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev(*args, **kwargs)
        site = _site()
        if site is None:
            m, name = None, "RLock"
        elif not _validating(rt):
            m, name = None, _plain_name("RLock", site)
        else:
            m = _instr._new_map("RLock", site)
            name = m.name
        r = ExploredRLock(None, m)  # type: ignore[arg-type]
        r._lock = ExploredCell(rt, r, name)
        return r

    return RLock


def _make_allocate(prev: Callable[[], Any]) -> Callable[[], Any]:
    def allocate_lock() -> Any:
        """A bare lock (Condition's waiter handshake): explored, and not a lockdep class."""
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev()
        c = ExploredCell.__new__(ExploredCell)
        c._cell = rt.lock_cell(c, "condition waiter")
        return c

    return allocate_lock


# --------------------------------------------------------------------------- threads
class _StartFlag:
    """A thread's ``_started`` event, without the Condition and lock an Event is built of.

    An explored start sets it with no visible operation and nothing explored waits on it, so
    every execution's threads would build those for nothing. Should the thread be started
    for real after all (made inside an exploration, started after it), whoever waits on the
    flag gets a real Event then: the flag is set before that event is looked at, and the
    event is made before the flag is re-read, so a waiter never misses the start."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set

    def set(self) -> None:
        self._flag = True
        ev = self._event
        if ev is not None:
            ev.set()

    def clear(self) -> None:
        self._flag = False
        ev = self._event
        if ev is not None:
            ev.clear()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        ev = self._event
        if ev is None:
            ev = self._event = threading.Event()
        if self._flag:
            return True
        return ev.wait(timeout)


def _invoke_excepthook(thread: threading.Thread) -> None:
    """``threading``'s hook for an exception in a thread, made only if one is ever needed
    (an explored thread's exception is the execution's failure instead)."""
    threading._make_invoke_excepthook()(thread)  # type: ignore[attr-defined]


def _make_thread_init(prev: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: threading.Thread, group: None = None, target: Any = None,  # noqa: N807
                 name: Any = None, args: Any = (), kwargs: Any = None, *,
                 daemon: bool | None = None) -> None:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev(self, group, target, name, args, kwargs, daemon=daemon)
        _explored_init(self, rt, group, target, name, args, kwargs, daemon)
        return None

    __init__.__doc__ = prev.__doc__
    return __init__


def _explored_init(self: threading.Thread, rt: SimRuntime, group: None, target: Any,
                   name: Any, args: Any, kwargs: Any, daemon: bool | None) -> None:
    """``Thread.__init__`` inside an exploration: the same attributes, at a fraction of the
    cost (every execution makes its threads again). What the real one builds for a thread
    the OS runs is left out or made on demand: the start event's Condition (see
    :class:`_StartFlag`), the exception hook's closure, and the registry of dangling
    threads, which only real threads can be."""
    assert group is None, "group argument must be None for now"
    st = _states(rt)
    if name:
        name = str(name)
    else:
        # counted per execution, so names agree between a failure and its replay
        name = f"Thread-{next(st['names'])}"
        if target is not None:
            try:
                name += f" ({target.__name__})"
            except AttributeError:
                pass
    self._target = target  # type: ignore[attr-defined]
    self._name = name  # type: ignore[attr-defined]
    self._args = args  # type: ignore[attr-defined]
    self._kwargs = {} if kwargs is None else kwargs  # type: ignore[attr-defined]
    if daemon is None:
        cur = st["threads"].get(id(rt.current))
        daemon = cur._daemonic if cur is not None else False  # type: ignore[attr-defined]
    self._daemonic = daemon  # type: ignore[attr-defined]
    self._ident = None  # type: ignore[attr-defined]
    self._native_id = None  # type: ignore[attr-defined]
    self._tstate_lock = None  # type: ignore[attr-defined]
    self._started = _StartFlag()  # type: ignore[attr-defined,assignment]
    self._is_stopped = False  # type: ignore[attr-defined]
    self._initialized = True  # type: ignore[attr-defined]
    self._stderr = sys.stderr  # type: ignore[attr-defined]
    self._invoke_excepthook = _invoke_excepthook  # type: ignore[attr-defined]


def _thread_start(self: threading.Thread) -> None:
    rt = getattr(_bound, "rt", None)
    if rt is None or getattr(self, "_kvmlock_rt", rt) is not rt:
        return _ORIG_THREAD["start"](self)
    if not self._initialized:  # type: ignore[attr-defined]
        raise RuntimeError("thread.__init__() not called")
    if getattr(self, "_kvmlock_task", None) is not None:
        raise RuntimeError("threads can only be started once")
    self._kvmlock_rt = rt  # type: ignore[attr-defined]
    ident = 1_000_000 + len(rt.tasks)
    self._ident = ident  # type: ignore[attr-defined]
    self._native_id = ident  # type: ignore[attr-defined]
    self._started._flag = True  # type: ignore[attr-defined]  # no visible operation for it

    # (what runs here and in ``run`` may be traced, with memory=True: every Python call it
    # makes before the scheduler's is a trace event, so they are kept few)
    threads = (getattr(rt, "_pythreads", None) or _states(rt))["threads"]

    def run() -> None:
        threads[id(rt.current)] = self
        try:
            if type(self).run is _THREAD_RUN and "run" not in self.__dict__:
                # Thread.run's own body, without its frame (under memory=True a call from
                # the explorer into the standard library is a trace event, and so is the one
                # into the target)
                target = self._target  # type: ignore[attr-defined]
                if target is not None:
                    target(*self._args, **self._kwargs)  # type: ignore[attr-defined]
            else:
                self.run()
        finally:
            self._is_stopped = True  # type: ignore[attr-defined]
            try:
                del self._target, self._args, self._kwargs  # type: ignore[attr-defined]
            except AttributeError:
                pass

    h = rt.spawn(run, (), self._name)  # type: ignore[attr-defined]
    self._kvmlock_task = h.task  # type: ignore[attr-defined]


def _thread_join(self: threading.Thread, timeout: float | None = None) -> None:
    rt = getattr(_bound, "rt", None)
    task = getattr(self, "_kvmlock_task", None)
    if rt is None or task is None or self._kvmlock_rt is not rt:  # type: ignore[attr-defined]
        return _ORIG_THREAD["join"](self, timeout)
    cur = rt.current
    if task is cur:
        raise RuntimeError("cannot join current thread")
    # (the record made here, not by ``rt.visible``: under memory=True a call is a trace event)
    if timeout is None:
        key = (cur.tid, None, False, "join", task.name, ACQ_NONE, True, task.tid)
        rt.stop(cur, _records.get(key) or _record(key), lambda: task.done, task)
    else:  # may return before the thread ends; both outcomes are explored
        key = (cur.tid, None, False, "join", task.name, ACQ_NONE, False, -1)
        rt.stop(cur, _records.get(key) or _record(key), None, None)


def _thread_is_alive(self: threading.Thread) -> bool:
    rt = getattr(_bound, "rt", None)
    task = getattr(self, "_kvmlock_task", None)
    if rt is None or task is None or self._kvmlock_rt is not rt:  # type: ignore[attr-defined]
        return _ORIG_THREAD["is_alive"](self)
    return not task.done


class _Started:
    """The ``_started`` event of a thread that is running: always set."""

    @staticmethod
    def is_set() -> bool:
        return True


class _MainTask(threading.Thread):
    """What ``current_thread()`` names the body's own task (made without Thread.__init__,
    whose Event would cost an explored lock in every execution)."""

    def __init__(self, ident: int) -> None:  # noqa: D107 - deliberately not calling super
        self._name = "MainThread"
        self._ident = ident
        self._native_id = ident
        self._daemonic = False
        self._initialized = True
        self._started = _Started()  # type: ignore[assignment]
        self._is_stopped = False
        self._target = None
        self._args = ()
        self._kwargs = {}


def _states(rt: SimRuntime) -> dict[str, Any]:
    """What the replacements keep per execution: threads by task, thread-name counter, clock."""
    st = getattr(rt, "_pythreads", None)
    if st is None:
        st = rt._pythreads = {"threads": {}, "names": itertools.count(1), "clock": 0.0}  # type: ignore[attr-defined]
    return st


def _make_current_thread(prev: Callable[[], Any]) -> Callable[[], Any]:
    def current_thread() -> Any:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev()
        threads = _states(rt)["threads"]
        t = threads.get(id(rt.current))
        if t is None:
            t = threads[id(rt.current)] = _MainTask(1_000_000 + rt.current.tid)
        return t

    return current_thread


def _make_get_ident(prev: Callable[[], int]) -> Callable[[], int]:
    def get_ident() -> int:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev()
        return 1_000_000 + rt.current.tid

    return get_ident


def _make_sleep(prev: Callable[[float], None]) -> Callable[[float], None]:
    def sleep(secs: float) -> None:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev(secs)
        if secs < 0:
            raise ValueError("sleep length must be non-negative")
        _states(rt)["clock"] += secs
        rt.visible(rt.current, rt.key(_SLEEP), "sleep", False, None, "sleep", ACQ_NONE, None)

    return sleep


def _make_clock(prev: Callable[[], float]) -> Callable[[], float]:
    def monotonic() -> float:
        """The clock timed waits read: virtual inside an exploration, where a wait that times
        out, or a sleep, moves it on by its length."""
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev()
        return _states(rt)["clock"]

    return monotonic


def _make_newname(prev: Callable[[str], str]) -> Callable[[str], str]:
    def _newname(template: str = "Thread-%d") -> str:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return prev(template)
        # counted per execution, so names agree between a failure and its replay
        return template % next(_states(rt)["names"])

    return _newname


class ExploredLocal:
    """``threading.local()`` made inside an exploration: one attribute dict per task."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return _ORIG["local"](*args, **kwargs) if cls is ExploredLocal else \
                super().__new__(cls)
        self = super().__new__(cls)
        object.__setattr__(self, "_kvmlock_dicts", {})
        object.__setattr__(self, "_kvmlock_init", (args, kwargs))
        return self

    def _kvmlock_dict(self) -> dict:
        dicts = object.__getattribute__(self, "_kvmlock_dicts")
        t = _cur()
        d = dicts.get(id(t))
        if d is None:
            d = dicts[id(t)] = {}
            args, kwargs = object.__getattribute__(self, "_kvmlock_init")
            init = type(self).__init__
            if init is not object.__init__ and dicts.get("_in_init") is None:
                dicts["_in_init"] = True
                try:
                    init(self, *args, **kwargs)
                finally:
                    del dicts["_in_init"]
        return d

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_kvmlock") or name in ("__class__", "__dict__"):
            if name == "__dict__":
                return object.__getattribute__(self, "_kvmlock_dict")()
            return object.__getattribute__(self, name)
        d = object.__getattribute__(self, "_kvmlock_dict")()
        if name in d:
            return d[name]
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__getattribute__(self, "_kvmlock_dict")()[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del object.__getattribute__(self, "_kvmlock_dict")()[name]
        except KeyError:
            raise AttributeError(name) from None


# --------------------------------------------------------------------------- installing
_ORIG: dict[str, Any] = {"Lock": threading.Lock, "local": threading.local}
_ORIG_THREAD: dict[str, Any] = {
    "start": threading.Thread.start,
    "join": threading.Thread.join,
    "is_alive": threading.Thread.is_alive,
}
_depth = 0
_made: dict[tuple[int, str], tuple[Any, Any]] = {}  # (id(namespace), name) -> (before, ours)
_install_lock = threading.Lock()


_target_lists: dict[bool, list[tuple[Any, str, Callable[[Any], Any], bool]]] = {}


def _targets() -> list[tuple[Any, str, Callable[[Any], Any], bool]]:
    """(namespace, attribute, maker(previous value) -> replacement, namespace is a class);
    made once (with asyncio's, once something imported it), as every check installs them."""
    aio = "asyncio" in sys.modules
    got = _target_lists.get(aio)
    if got is None:
        got = _target_lists[aio] = [(ns, name, make, isinstance(ns, type))
                                    for ns, name, make in _make_targets(aio)]
    return got


def _make_targets(aio: bool) -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """(namespace, attribute, maker(previous value) -> replacement)."""
    import concurrent.futures.thread as cft

    from kvmlock.explore import pyqueue

    mod = None
    if aio:
        from kvmlock.explore import asyncio_loop as mod
    return (mod.targets() if mod is not None else []) + pyqueue.targets() + [
        (threading, "Lock", _make_lock),
        (threading, "RLock", _make_rlock),
        (threading, "_allocate_lock", _make_allocate),
        (threading, "current_thread", _make_current_thread),
        (threading, "currentThread", _make_current_thread),
        (threading, "get_ident", _make_get_ident),
        (threading, "local", lambda prev: ExploredLocal),
        (time, "sleep", _make_sleep),
        (threading, "_time", _make_clock),
        (queue, "time", _make_clock),
        (threading, "_newname", _make_newname),
        (cft, "_global_shutdown_lock", lambda prev: _SharedLock(prev)),
        (threading.Thread, "__init__", _make_thread_init),
        (threading.Thread, "start", lambda prev: _thread_start),
        (threading.Thread, "join", lambda prev: _thread_join),
        (threading.Thread, "is_alive", lambda prev: _thread_is_alive),
    ]


class _SharedLock:
    """A lock that lives longer than one exploration (a module's): explored per execution."""

    def __init__(self, prev: Any) -> None:
        self._prev = prev
        self._per: dict[int, tuple[SimRuntime, Any]] = {}

    def _get(self) -> Any:
        rt = getattr(_bound, "rt", None)
        if rt is None:
            return self._prev
        got = self._per.get(id(rt))
        if got is None or got[0] is not rt:
            lock = ExploredCell(rt, self, "module lock")
            self._per = {id(rt): (rt, lock)}
            return lock
        return got[1]

    def acquire(self, *a: Any, **k: Any) -> bool:
        return self._get().acquire(*a, **k)

    def release(self) -> None:
        self._get().release()

    def __enter__(self) -> bool:
        return self._get().acquire()

    def __exit__(self, *exc: object) -> None:
        self._get().release()

    def locked(self) -> bool:
        return self._get().locked()

    def _at_fork_reinit(self) -> None:
        self._prev._at_fork_reinit()


_by_id: dict[int, Any] = {}  # id(a replaced callable) -> its replacement, while installed


class _Plan:
    """What an install puts in, as parallel columns (namespace, name, what was there, ours),
    so installing, checking and taking out are C loops over them (``map``) instead of a Python
    loop per replacement: checks install and take out the replacements every time, and a small
    check's executions cost less than thirty rounds of a Python loop. ``lookups`` are the
    namespaces' own dictionaries' ``get`` (a class's ``__dict__`` view is live), so a check
    reads what the namespace itself holds, as a class's own entry, not an inherited one."""

    __slots__ = ("nss", "names", "before", "ours", "lookups", "by_id")

    def __init__(self, rows: list[tuple[Any, str, Any, Any]]) -> None:
        self.nss = [ns for ns, _n, _b, _o in rows]
        self.names = [n for _ns, n, _b, _o in rows]
        self.before = [b for _ns, _n, b, _o in rows]
        self.ours = [o for _ns, _n, _b, o in rows]
        self.lookups = [ns.__dict__.get for ns in self.nss]
        self.by_id = {id(b): o for _ns, _n, b, o in rows if callable(b)}

    def holds(self, values: list[Any]) -> bool:
        """Whether every namespace holds its entry of ``values`` (by identity) right now."""
        return all(map(operator.is_, map(operator.call, self.lookups, self.names), values))

    def put(self, values: list[Any]) -> None:
        any(map(setattr, self.nss, self.names, values))  # (setattr returns None: all run)


#: What the last install put in. The next install reuses it while every ``before`` is still
#: what is there (finding and making the replacements again cost more than a small check's
#: executions).
_plan: _Plan | None = None
_plan_aio = False
_installed: _Plan | None = None  # the plan in force, for taking it out


def _rebinds(module_globals: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Names in the body's module bound to a replaced object (``from threading import Lock``)."""
    if not module_globals:
        return []
    table = _by_id
    if table.keys().isdisjoint(map(id, module_globals.values())):
        return []  # (the usual case, found without a Python loop over the module)
    return [(name, table[id(v)]) for name, v in list(module_globals.items())
            if id(v) in table and v is not table[id(v)]]


def _new_plan() -> _Plan:
    rows = []
    for ns, name, make, cls in _targets():
        before = ns.__dict__[name] if cls else getattr(ns, name)
        # a replacement made for the same previous object is made once: making them
        # (classes, closures) cost more than a small check's executions
        made = _made.get((id(ns), name))
        if made is not None and made[0] is before:
            ours = made[1]
        else:
            ours = make(before)
            _made[(id(ns), name)] = (before, ours)
        rows.append((ns, name, before, ours))
    return _Plan(rows)


def _install() -> None:
    global _plan, _plan_aio, _installed
    aio = "asyncio" in sys.modules
    plan = _plan
    if aio != _plan_aio or plan is None or not plan.holds(plan.before):
        plan = _plan = _new_plan()
        _plan_aio = aio
    _installed = plan
    plan.put(plan.ours)
    _by_id.update(plan.by_id)


def _uninstall() -> None:
    global _installed
    plan = _installed
    _installed = None
    _by_id.clear()
    if plan is None:
        return
    if plan.holds(plan.ours):
        plan.put(plan.before)
        return
    for ns, name, get, before, ours in zip(plan.nss, plan.names, plan.lookups, plan.before,
                                           plan.ours, strict=True):
        if get(name) is ours:  # else someone replaced it since: theirs stays
            setattr(ns, name, before)


class Substitution:
    """Threading replaced for one exploration; ``close()`` (or leaving ``with``) undoes it."""

    def __init__(self, body: Callable[..., Any] | None = None) -> None:
        global _depth
        with _install_lock:
            if _depth == 0:
                _install()
            _depth += 1
        self._open = True
        g = getattr(body, "__globals__", None)
        self._globals = g
        self._renamed = _rebinds(g)
        self._old = [(n, g[n]) for n, _v in self._renamed] if g is not None else []
        for n, v in self._renamed:
            g[n] = v  # type: ignore[index]

    def close(self) -> None:
        global _depth
        if not self._open:
            return
        self._open = False
        g = self._globals
        for n, v in self._old:
            g[n] = v  # type: ignore[index]
        with _install_lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()

    def __enter__(self) -> Substitution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_running: dict[int, SimRuntime] = {}  # OS thread ident -> the execution it runs (for watchers)


def running(ident: int) -> SimRuntime | None:
    """The execution OS thread ``ident`` is running, if any."""
    return _running.get(ident)


def unbind_thread() -> None:
    """The calling OS thread runs no execution any more (cleanup after an interruption)."""
    _bound.rt = None
    _running.pop(_thread.get_ident(), None)


class Binding:
    """The calling OS thread runs ``rt`` until ``close()``: replacements answer for it."""

    __slots__ = ("_prev", "_rt")

    def __init__(self, rt: SimRuntime, lockdep: bool = True) -> None:
        self._prev = getattr(_bound, "rt", None)
        self._rt = rt
        if not lockdep:
            rt._kvmlock_plain = True  # type: ignore[attr-defined]  # see PlainExploredLock
        _bound.rt = rt
        _running[_thread.get_ident()] = rt

    def close(self) -> None:
        _bound.rt = self._prev
        # what the replacements kept for the execution: its threads name the runtime, so
        # kept on it they are a reference cycle, which only the cyclic collector frees
        self._rt.__dict__.pop("_pythreads", None)
        # ThreadPoolExecutor lists its threads for the interpreter's exit; explored ones are
        # over with their execution and must not be woken then.
        cft = sys.modules.get("concurrent.futures.thread")
        if cft is not None and cft._threads_queues:
            for t in list(cft._threads_queues):
                if getattr(t, "_kvmlock_rt", None) is self._rt:
                    cft._threads_queues.pop(t, None)
        if self._prev is None:
            _running.pop(_thread.get_ident(), None)
        else:
            _running[_thread.get_ident()] = self._prev


def substituted() -> bool:
    """Whether the threading replacements are installed (by some exploration) right now."""
    return _depth > 0


__all__ = ["Binding", "Substitution", "current_rt", "substituted"]
