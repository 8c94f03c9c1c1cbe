"""Validate asyncio programs: ``asyncio.Lock``, ``Condition`` and binary ``Semaphore`` across tasks.

Tasks on one thread interleave at every ``await``, so two tasks taking two asyncio locks in
opposite orders deadlock exactly as two threads do -- and, as with threads, lockdep reports the
inversion from one run that did not hang. Each asyncio task gets its own held-lock stack: a lock
operation runs in a lockdep world whose current task is that asyncio task (the graph, the
report format and the near-miss rules are the thread world's own). Lock classes are creation
sites named as for threading locks (:mod:`.naming`), validated instance by instance within a
class.

Awaiting a task is a wait-for dependency: ``await task``, ``asyncio.gather()``,
``asyncio.wait()`` for all of its tasks, ``asyncio.wait_for(task, None)`` and leaving an
``asyncio.TaskGroup`` (which waits for all of its tasks). Every task holds
a pseudo-lock of its class (its coroutine's qualified name) for its whole life, so what it
takes depends on it; a task that awaits another while holding a lock records ``lock -> task``.
A lock held while a task is awaited and a lock that task takes first are ordered instance by
instance (:mod:`.instances`): tasks of one coroutine taking locks of one class, as a recursive
tree walk does, are fine in one consistent order, and the very lock held while awaiting the
task that takes it is reported. A wait with a timeout (an ``asyncio.timeout()`` block with a
deadline too), or for the first of several, adds nothing: it cannot hang on one task. A
coroutine that ``wait_for()`` runs with a timeout is validated as a task of its own, as CPython
3.11 made it one (3.12 runs it in the caller's task). Awaits are seen through the task's
class, so lockdep makes every loop's tasks, eager ones included (``eager_task_factory``); a
loop with a task factory of its own keeps it, and a ``RuntimeWarning`` says its awaits are not
validated.

Waiting for an ``asyncio.Event`` is one too: a task waiting for it while holding a lock records
``lock -> event``, and a task setting it while holding a lock records ``event -> lock`` (the
setter needed that lock to get there). Each Event creation site is one class.

A task ending with asyncio locks held is ``held_at_exit``. Counting semaphores (initial value
above 1) are not validated: they are not mutual exclusion, and who will release them is not
known.
"""

from __future__ import annotations

import asyncio
import asyncio.locks
import inspect
import os
import sys
import warnings
import weakref
from typing import Any

from kvmlock import runtime as _rt
from kvmlock.lockdep import api, core, instances, state, validate
from kvmlock.lockdep.graph import TASK_KEY, is_task_class
from kvmlock.lockdep.naming import class_name, site_key, site_of
from kvmlock.lockdep.state import IRQ_MARK, _emit, _GraphLock, _reentered
from kvmlock.lockdep.where import _internal, user_site, user_stack

_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_ORIG = {"Lock": asyncio.Lock, "Semaphore": asyncio.Semaphore, "Event": asyncio.Event}
_ORIG_CREATE_TASK = asyncio.BaseEventLoop.create_task
_ORIG_GATHERING = asyncio.tasks._GatheringFuture  # type: ignore[attr-defined]
_ORIG_WAIT = asyncio.tasks.wait
_ORIG_WAIT_FOR = asyncio.tasks.wait_for
_ORIG_TG_EXIT = asyncio.TaskGroup.__aexit__
_ORIG_TIMEOUT = (asyncio.timeouts.Timeout.__aenter__, asyncio.timeouts.Timeout.__aexit__)


class _TaskState:
    """lockdep's per-task scratch space for one asyncio task (what a runtime's task is)."""

    __slots__ = ("lockdep", "name", "irq", "task_map", "rt", "watched", "under", "took",
                 "timeouts", "inner", "__weakref__")

    def __init__(self, task: asyncio.Task, coro: Any = None) -> None:
        """``coro``: what the task runs, unless its own coroutine (see :func:`_wait_for`)."""
        coro = task.get_coro() if coro is None else coro
        qual = getattr(coro, "__qualname__", None) or type(coro).__qualname__
        self.lockdep: Any = None
        self.irq = 0
        self.name = f"{task.get_name()} ({getattr(coro, '__name__', qual)})"
        label = "task:" + qual.replace("<locals>.", "")
        self.task_map = core.LockMap(label, "threading", (TASK_KEY, qual))
        self.rt = _TaskRuntime(self)
        self.watched = False
        # the locks held by tasks awaiting this one, and those it took first (instances.py)
        self.under: list[tuple] = []
        self.took: dict[int, tuple] = {}  # id(lock) -> (ref, where, call path)
        self.timeouts: list[Any] = []  # the asyncio.timeout() blocks it is in
        self.inner: list[_TaskState] = []  # wait_for() bodies it runs as tasks (_wait_for)


class _TaskRuntime:
    """The thread world's runtime, except that the running task is one asyncio task."""

    __slots__ = ("current",)
    name = "asyncio"

    def __init__(self, current: _TaskState) -> None:
        self.current = current

    def __getattr__(self, attr: str) -> Any:
        return getattr(_rt.THREADS, attr)


_STATES: weakref.WeakKeyDictionary[asyncio.Task, _TaskState] = weakref.WeakKeyDictionary()


def _state_for(task: asyncio.Task) -> _TaskState:
    st = _STATES.get(task)
    if st is None:
        st = _STATES[task] = _TaskState(task)
    if not st.watched:
        st.watched = True
        task.add_done_callback(_task_done)
    return st


def _current() -> _TaskState | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: plain synchronous code
        return None
    if task is None:
        return None
    st = _state_for(task)
    return st.inner[-1] if st.inner else st


def _enter(st: _TaskState | None) -> Any:
    """Enter ``st``'s lockdep world (None: stay in the calling thread's)."""
    if st is None:
        return None
    token = _rt.enter(_rt.World(st.rt, _rt.world().lockdep))
    if st.lockdep is None:
        st.task_map.acquire(trylock=True)  # the task's own class, held for its whole life
    return token


def _leave(token: Any) -> None:
    if token is not None:
        _rt.leave(token)


def _task_done(task: asyncio.Task) -> None:
    st = _STATES.get(task)
    if st is not None:
        _ended(st)


def _ended(st: _TaskState) -> None:
    """A task's end: its own class is dropped and any lock still held is ``held_at_exit``."""
    if st.lockdep is None:
        return
    token = _rt.enter(_rt.World(st.rt, _rt.world().lockdep))
    try:
        held = st.lockdep
        if len(held) > 1 and held[1][0] is st.task_map:
            del held[1]  # not a lock the task forgot: its own class
        api.task_exit(st.name)
    finally:
        _rt.leave(token)


def _site() -> Any:
    """The user line creating a lock (a Condition() making its Lock: the line that asked)."""
    f = sys._getframe(1)
    while f is not None and (f.f_code.co_filename.startswith(_ASYNCIO_DIR)
                             or _internal(f.f_code.co_filename)):
        f = f.f_back
    return None if f is None else site_of(f)


class _Checked:
    """What a validated asyncio lock adds: its LockMap and the stack its hold is on."""

    _ld: core.LockMap | None = None
    _ld_owner: Any = None

    def _ld_init(self, what: str) -> None:
        site = _site()
        if site is not None:
            key = site_key(what, site)
            self._ld = core.LockMap(class_name(key, site), "threading", key)

    async def _ld_acquire(self, acquire: Any) -> bool:
        m = self._ld
        if m is None:
            return await acquire()
        st = _current()
        token = _enter(st)
        try:
            if st is not None:
                held = st.lockdep
                if held is not None and len(held) == 2 and held[1][0] is st.task_map:
                    known = st.took.get(id(m))  # (a task taking one lock in a loop: once)
                    if st.under or known is None or known[0]() is not m:
                        _by_instance(instances.task_takes, held, st, m)  # its first lock
            m.acquire()  # validated before it can wait
        finally:
            _leave(token)
        try:
            await acquire()
        except BaseException:
            token = _enter(st)
            try:
                m.release()
            finally:
                _leave(token)
            raise
        self._ld_owner = (st.lockdep if st is not None else _rt.current_task().lockdep)
        return True

    def _ld_release(self) -> None:
        m, owner = self._ld, self._ld_owner
        if m is None or owner is None:
            return
        self._ld_owner = None
        st = _current()
        token = _enter(st)
        try:
            if owner is _rt.current_task().lockdep:
                m.release()
            else:
                core.forget(m, owner)  # released by another task: a hand-off
        finally:
            _leave(token)


class CheckedAsyncLock(_Checked, asyncio.Lock):
    """``asyncio.Lock`` reporting to lockdep."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ld_init("asyncio.Lock")

    async def acquire(self) -> bool:
        return await self._ld_acquire(super().acquire)

    def release(self) -> None:
        if not self.locked():
            super().release()  # raises as a plain asyncio.Lock does
        self._ld_release()
        super().release()


class CheckedAsyncSemaphore(_Checked, asyncio.Semaphore):
    """``asyncio.Semaphore``; one of initial value 1 is a lock and reports to lockdep."""

    def __init__(self, value: int = 1, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        if value == 1:
            self._ld_init("asyncio.Semaphore")

    async def acquire(self) -> bool:
        return await self._ld_acquire(super().acquire)

    def release(self) -> None:
        self._ld_release()
        super().release()


class CheckedAsyncEvent(asyncio.Event):
    """``asyncio.Event`` as a wait-for dependency: a task that waits for it while holding locks
    depends on it, and setting it while holding locks makes it depend on them (see
    :func:`kvmlock.lockdep.validate.wakes`): a waiter holding a lock its setter needs first is
    a deadlock, reported from one run whichever side came first. Each creation site is one
    class, named as a lock made there would be."""

    _ld: core.LockMap | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        site = _site()
        if site is not None:
            key = site_key("asyncio.Event", site)
            self._ld = core.LockMap(class_name(key, site), "threading", key)

    async def wait(self) -> bool:
        m = self._ld
        if m is not None:  # (set already or not: on another day the wait comes first)
            st = _current()
            entries = _lock_entries_of(st)
            if entries:
                token = _enter(st)
                try:
                    m.sync()  # validated before it can wait
                finally:
                    _leave(token)
        return await super().wait()

    def set(self) -> None:
        m = self._ld
        if m is not None:
            st = _current()
            entries = _lock_entries_of(st)
            if entries:
                token = _enter(st)
                try:
                    validate.wakes(core._state(), _rt.current_task().lockdep, m, entries)
                finally:
                    _leave(token)
        super().set()


def _lock_entries_of(st: _TaskState | None) -> list[tuple]:
    """The locks the running task (``st``, or the calling thread's own when None) holds, less
    tasks' own classes: what a wait in it would keep held."""
    held = st.lockdep if st is not None else _rt.current_task().lockdep
    if held is None:
        return []
    return [e for e in held[1:] if e[0] is not IRQ_MARK and not _task_class(e[0])]


def _task_class(m: Any) -> bool:
    return m is not IRQ_MARK and is_task_class(m._cls)


class _WatchedGathering(_ORIG_GATHERING):  # type: ignore[misc, valid-type]
    """What ``asyncio.gather()`` returns: awaiting it awaits every child task."""

    def __await__(self) -> Any:
        if not self.done():
            for child in self._children:
                if isinstance(child, asyncio.Task) and not child.done():
                    _awaiting(child)
        return super().__await__()

    __iter__ = __await__


async def _wait(fs: Any, *, timeout: Any = None,
                return_when: str = asyncio.ALL_COMPLETED) -> Any:
    """``asyncio.wait()``: waiting, without a timeout, for all of its tasks awaits each. (A
    wait with a timeout cannot hang, and one for the first of several waits for any one.)"""
    if (timeout is None and return_when == asyncio.ALL_COMPLETED
            and not (asyncio.isfuture(fs) or asyncio.iscoroutine(fs)) and fs):
        fs = set(fs)
        for f in fs:
            if isinstance(f, asyncio.Task) and not f.done():
                _awaiting(f)
    return await _ORIG_WAIT(fs, timeout=timeout, return_when=return_when)


_wait.__doc__ = _ORIG_WAIT.__doc__
_wait.__name__ = _wait.__qualname__ = "wait"

# CPython 3.12 rewrote wait_for() on asyncio.timeout(): an awaitable that is not a future,
# given a positive timeout, is now awaited in the caller's own task inside that timeout block,
# where 3.11 wrapped it in a task of its own (ensure_future) and waited for that with a bound.
# There lockdep keeps 3.11's view (and only there is wait_for() replaced): the awaitable runs as
# a task of its own -- its own class, held-lock stack and timeouts, so its awaits are not bounded
# by the caller's timeout and the caller's locks are not its own -- which the caller waits for
# with a bound (adding nothing).
_WAIT_FOR_INLINE = sys.version_info >= (3, 12)


async def _wait_for(fut: Any, timeout: Any) -> Any:
    """``asyncio.wait_for()``: a coroutine it runs is a task of its own, as on CPython 3.11."""
    if (timeout is not None and not asyncio.isfuture(fut)
            and inspect.isawaitable(fut) and timeout > 0):
        task = asyncio.current_task()
        if task is not None and type(_state_for(task)) is _TaskState:  # (not an explored one)
            fut = _as_own_task(fut, task)
    return await _ORIG_WAIT_FOR(fut, timeout)


_wait_for.__doc__ = _ORIG_WAIT_FOR.__doc__
_wait_for.__name__ = _wait_for.__qualname__ = "wait_for"


async def _as_own_task(aw: Any, task: asyncio.Task) -> Any:
    base, st = _state_for(task), _TaskState(task, aw)
    base.inner.append(st)
    try:
        return await aw
    finally:
        base.inner.remove(st)
        _ended(st)


class _WatchedTask(asyncio.Task):
    """A task whose awaiting is a wait-for dependency (see the module docstring)."""

    def __await__(self) -> Any:
        if not self.done() and not self.cancelling():  # (a cancelled task will not wait)
            _awaiting(self)
        return super().__await__()

    __iter__ = __await__


async def _taskgroup_exit(self: asyncio.TaskGroup, et: Any, exc: Any, tb: Any) -> Any:
    """Leaving a TaskGroup normally waits for all of its tasks, as gather() does. (Leaving it
    with an exception cancels them first.)"""
    if et is None:
        for t in list(self._tasks):  # type: ignore[attr-defined]
            if not t.done():
                _awaiting(t)
    return await _ORIG_TG_EXIT(self, et, exc, tb)


async def _timeout_enter(self: Any) -> Any:
    out = await _ORIG_TIMEOUT[0](self)
    st = _current()
    if st is not None:
        st.timeouts.append(self)
    return out


async def _timeout_exit(self: Any, et: Any, exc: Any, tb: Any) -> Any:
    st = _current()
    if st is not None and self in st.timeouts:
        st.timeouts.remove(self)
    return await _ORIG_TIMEOUT[1](self, et, exc, tb)


def _awaiting(task: asyncio.Task) -> None:
    me = _current()
    if me is None:
        return
    if any(t.when() is not None for t in me.timeouts):
        return  # inside an asyncio.timeout() block with a deadline: a bounded wait
    if me.lockdep is None or len(me.lockdep) <= 2:  # nothing held: no class dependency,
        if me.under:  # but whoever waits for this task while holding a lock waits for that one
            target = _state_for(task)
            token = _enter(me)
            try:
                _by_instance(instances.task_awaited, me.lockdep, target, me.task_map, me.under)
            finally:
                _leave(token)
        return
    target = _state_for(task)
    token = _enter(me)
    try:
        held = me.lockdep
        if not _task_class(held[-1][0]):
            _by_instance(instances.task_awaited, held, target)
        target.task_map.sync()
    finally:
        _leave(token)


def _by_instance(check: Any, held: list, st: _TaskState, *more: Any) -> None:
    """Run one of instances.py's checks of an awaited task (``st``) in the running task's
    world: under the graph lock, every time (a chain cache cannot tell instances apart)."""
    S = core._state()
    if not S.on or _reentered(S):
        return
    found: list = []
    where, stack = user_site(2), user_stack(2)
    with _GraphLock(S):
        if check is instances.task_takes:
            check(S, held, st.task_map, st.under, st.took, *more, where, stack, found)
        else:
            check(S, held, st.task_map, st.under, st.took, where, stack, found, *more)
    _emit(S, found)


def _create_task(self: asyncio.AbstractEventLoop, coro: Any, *, name: Any = None,
                 context: Any = None) -> asyncio.Task:
    factory = getattr(self, "_task_factory", None)
    if factory is not None:
        if factory is _EAGER:  # the same eager start, of a watched task
            task = _EAGER_WATCHED(self, coro, name=name, context=context)
            _state_for(task)
            return task
        _unwatched(self, factory)
        return _ORIG_CREATE_TASK(self, coro, name=name, context=context)  # type: ignore
    self._check_closed()  # type: ignore[attr-defined]
    task = _WatchedTask(coro, loop=self, name=name, context=context)
    _state_for(task)  # its end is checked before anyone awaiting it resumes
    if task._source_traceback:  # type: ignore[attr-defined]
        del task._source_traceback[-1]  # type: ignore[attr-defined]
    return task


#: asyncio's eager task factory (3.12 on): a task runs from its creation to its first
#: suspension inside ``create_task``. Made over the watched task class, its tasks' awaits are
#: validated as other tasks' are.
_EAGER = getattr(asyncio, "eager_task_factory", None)
_EAGER_WATCHED = (asyncio.create_eager_task_factory(_WatchedTask)  # type: ignore[attr-defined]
                  if _EAGER is not None else None)
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def _unwatched(loop: Any, factory: Any) -> None:
    """A loop whose tasks a factory of its own makes: their awaiting cannot be watched (a
    task's await is seen through its class), which is said once per loop rather than left
    to look validated."""
    if loop in _WARNED:
        return
    _WARNED.add(loop)
    name = getattr(factory, "__qualname__", None) or type(factory).__qualname__
    state.note_gap(f"awaiting tasks made by an event loop's own task factory "
                   f"({getattr(factory, '__module__', '?')}.{name}) was not validated")
    warnings.warn(
        f"kvmlock lockdep: this event loop makes its tasks with its own task factory "
        f"({factory!r}); awaiting those tasks is not validated, so a lock cycle through an "
        f"awaited task is not reported (asyncio's eager_task_factory is; locks themselves "
        f"are validated as always)", RuntimeWarning, stacklevel=3)


def patch() -> None:
    asyncio.Lock = asyncio.locks.Lock = CheckedAsyncLock  # type: ignore[misc]
    asyncio.Semaphore = asyncio.locks.Semaphore = CheckedAsyncSemaphore  # type: ignore[misc]
    asyncio.Event = asyncio.locks.Event = CheckedAsyncEvent  # type: ignore[misc]
    asyncio.BaseEventLoop.create_task = _create_task  # type: ignore[method-assign]
    asyncio.tasks._GatheringFuture = _WatchedGathering  # type: ignore[attr-defined]
    asyncio.wait = asyncio.tasks.wait = _wait  # type: ignore[assignment]
    if _WAIT_FOR_INLINE:
        asyncio.wait_for = asyncio.tasks.wait_for = _wait_for  # type: ignore[assignment]
    asyncio.TaskGroup.__aexit__ = _taskgroup_exit  # type: ignore[method-assign]
    asyncio.timeouts.Timeout.__aenter__ = _timeout_enter  # type: ignore[method-assign]
    asyncio.timeouts.Timeout.__aexit__ = _timeout_exit  # type: ignore[method-assign]


def unpatch() -> None:
    asyncio.Lock = asyncio.locks.Lock = _ORIG["Lock"]  # type: ignore[misc]
    asyncio.Semaphore = asyncio.locks.Semaphore = _ORIG["Semaphore"]  # type: ignore[misc]
    asyncio.Event = asyncio.locks.Event = _ORIG["Event"]  # type: ignore[misc]
    asyncio.BaseEventLoop.create_task = _ORIG_CREATE_TASK  # type: ignore[method-assign]
    asyncio.tasks._GatheringFuture = _ORIG_GATHERING  # type: ignore[attr-defined]
    asyncio.wait = asyncio.tasks.wait = _ORIG_WAIT  # type: ignore[assignment]
    asyncio.wait_for = asyncio.tasks.wait_for = _ORIG_WAIT_FOR  # type: ignore[assignment]
    asyncio.TaskGroup.__aexit__ = _ORIG_TG_EXIT  # type: ignore[method-assign]
    asyncio.timeouts.Timeout.__aenter__ = _ORIG_TIMEOUT[0]  # type: ignore[method-assign]
    asyncio.timeouts.Timeout.__aexit__ = _ORIG_TIMEOUT[1]  # type: ignore[method-assign]
