"""The runtime: the one object that decides how a primitive blocks, wakes and names its task.

Every primitive in :mod:`kvmlock.sync` has a single implementation. What differs between the
two worlds -- real OS threads, or cooperative tasks driven by :mod:`kvmlock.explore` -- is
hidden behind the small interface below, so model code runs unchanged in both:

``lock_cell(owner, label)``
    A binary lock: ``acquire(blocking=True) -> bool`` and ``release()``. On threads it is a
    plain ``threading.Lock`` (the fastest blocking object Python has); under the explorer each
    call is a visible operation and blocking parks the task.

``waitq(owner)``
    A monitor for primitives with richer state (rwsem, SRCU, rcuwait, atomics)::

        with wq:                          # threads: the monitor's lock; explorer: nothing
            wq.wait_for(pred, "down_read")  # visible op: park until pred() holds
            ...mutate state...
            wq.notify_all()               # threads: wake sleepers; explorer: nothing

    Inside one ``with wq:`` block there is at most one visible operation (``wait_for`` or
    ``point``) and it comes first, so the block's mutation is atomic with that operation in
    both worlds. ``write=False`` marks an operation that commutes with other reads of the same
    owner (the explorer's partial-order reduction uses it).

``current_task()``
    An object private to the running task, where lockdep keeps its held-lock stack.

``spawn(fn, args, name)``
    Start a task; the handle has ``join()``.

``point(owner, kind, write)``
    A visible operation that never blocks (atomic load/store, ``yield_point``).

The active runtime is a module global swapped by :func:`install`; primitives read it when they
are built, so a primitive belongs to the world it was created in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol


class LockCell(Protocol):
    def acquire(self, blocking: bool = True) -> bool: ...
    def release(self) -> None: ...


class WaitQueue(Protocol):
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def wait_for(self, pred: Callable[[], bool], kind: str, write: bool = True) -> None: ...
    def point(self, kind: str, write: bool = True) -> None: ...
    def notify_all(self) -> None: ...


class Handle(Protocol):
    name: str

    def join(self, timeout: float | None = None) -> None: ...


class Runtime(Protocol):
    name: str

    def lock_cell(self, owner: object, label: str) -> LockCell: ...
    def waitq(self, owner: object) -> WaitQueue: ...
    def current_task(self) -> Any: ...
    def spawn(self, fn: Callable[..., Any], args: tuple, name: str | None) -> Handle: ...
    def point(self, owner: object, kind: str, write: bool = True) -> None: ...


# --------------------------------------------------------------------------- threads


class _ThreadWaitQueue:
    """A condition variable; ``point`` is free because real threads need no scheduling points."""

    __slots__ = ("_cond", "__enter__", "__exit__", "notify_all")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.__enter__ = self._cond.__enter__
        self.__exit__ = self._cond.__exit__
        self.notify_all = self._cond.notify_all

    def wait_for(self, pred: Callable[[], bool], kind: str, write: bool = True) -> None:
        if not pred():
            self._cond.wait_for(pred)

    def point(self, kind: str, write: bool = True) -> None:
        return None


class _TaskState(threading.local):
    """Per-thread scratch space; lockdep stores its held-lock stack in ``lockdep``."""

    def __init__(self) -> None:
        self.lockdep: Any = None
        self._ident = threading.get_ident()

    @property
    def name(self) -> str:
        # Looked up lazily and without threading.current_thread(): a lock taken while a thread
        # is still starting would otherwise register a bogus "Dummy" thread for it.
        t = threading._active.get(self._ident)  # type: ignore[attr-defined]
        return t.name if t is not None else f"thread-{self._ident}"


class _ThreadHandle:
    def __init__(self, thread: threading.Thread, box: list) -> None:
        self._thread = thread
        self._box = box
        self.name = thread.name

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread; re-raise in the joiner what the thread raised."""
        self._thread.join(timeout)
        if self._box:
            exc = self._box.pop()
            raise exc


class ThreadRuntime:
    """Real OS threads: primitives block for real, lockdep validates as it happens."""

    name = "threads"

    def __init__(self) -> None:
        self._tls = _TaskState()

    def lock_cell(self, owner: object, label: str) -> LockCell:
        return threading.Lock()

    def waitq(self, owner: object) -> WaitQueue:
        return _ThreadWaitQueue()

    def current_task(self) -> Any:
        return self._tls

    def spawn(self, fn: Callable[..., Any], args: tuple = (), name: str | None = None) -> Handle:
        box: list[BaseException] = []

        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # handed to join()
                box.append(exc)
            finally:
                for hook in task_exit_hooks:
                    hook()

        t = threading.Thread(target=run, name=name or getattr(fn, "__name__", None), daemon=True)
        t.start()
        return _ThreadHandle(t, box)

    def point(self, owner: object, kind: str, write: bool = True) -> None:
        return None


# --------------------------------------------------------------------------- switching

#: Called at the end of every spawned task (both worlds), e.g. lockdep's held-at-exit check.
task_exit_hooks: list[Callable[[], None]] = []

THREADS = ThreadRuntime()
RT: Runtime = THREADS


def current_task() -> Any:
    """The running task's private state object (rebound by :func:`install` for speed)."""
    return THREADS._tls


def install(rt: Runtime) -> Runtime:
    """Make ``rt`` the active runtime; returns the previous one so callers can restore it."""
    global RT, current_task
    prev = RT
    RT = rt
    current_task = rt.current_task
    return prev


def spawn(fn: Callable[..., Any], *args: Any, name: str | None = None) -> Handle:
    """Start ``fn(*args)`` as a task of the active world: a real thread, or an explored task."""
    return RT.spawn(fn, args, name)
