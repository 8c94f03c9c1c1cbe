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
            wq.notify_all()               # threads: wake pollers to look again; explorer: nothing

    Inside one ``with wq:`` block there is at most one visible operation (``wait_for`` or
    ``point``) and it comes first, so the block's mutation is atomic with that operation in
    both worlds. ``write=False`` marks an operation that commutes with other reads of the same
    owner (the explorer's partial-order reduction uses it).

    ``wait_for`` is a wait that *polls*: the task goes on as soon as ``pred()`` holds, woken or
    not (lock acquisition, a grace period, a spin on a flag). ``sleeps=True`` says the wait
    sleeps until the releaser's ``notify_all`` (an rw_semaphore's): the explorer then fails a
    task that finds ``pred()`` true with no ``notify_all`` since it started waiting. A
    primitive that really sleeps on a queue until someone wakes it (rcuwait, a wait queue, a
    completion) uses the kernel's protocol instead::

        with wq:
            wq.point("prepare_to_wait")   # visible op on the queue...
            ticket = wq.ticket()          # ...with which "I am about to sleep" is atomic
            if cond(): ...                # the waiter's own check, after the ticket
        with wq:
            wq.sleep(ticket, "schedule")  # visible op: runs on only after a wake_up() that
                                          # came after the ticket; the condition may be false
        with wq:
            wq.point("wake_up")
            wq.wake_up()                  # wakes every sleeper; with none, it is lost

    A wake-up before the ticket does not count (it is lost), and a woken sleeper is not told
    why: code that does not re-check its condition after ``sleep`` runs with it false.

``current``
    The running task's private object, where lockdep keeps its held-lock stack; ``None``
    means "the calling OS thread's own" (the threads world keeps it in a thread-local).
    ``current_task()`` returns the object in both cases.

``spawn(fn, args, name)``
    Start a task; the handle has ``join()``.

``point(owner, kind, write)``
    A visible operation that never blocks (atomic load/store, ``yield_point``).

A *world* is a runtime plus lockdep's state for it (:class:`World`). The world in force is found
through one context variable, so it is private to an OS thread, an asyncio task or a greenlet:
an exploration running in one thread has its own world and never sees, nor disturbs, real
threads using kvmlock beside it, and several explorations can run in threads at once. A thread
started with :func:`spawn` inherits its spawner's world; any other thread starts in the shared
threads world (:data:`THREADS_WORLD`). Primitives read the runtime when they are built
(``runtime.active()``), so a primitive belongs to the world it was created in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Protocol


class LockCell(Protocol):
    def acquire(self, blocking: bool = True) -> bool: ...
    def release(self) -> None: ...


class WaitQueue(Protocol):
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def wait_for(self, pred: Callable[[], bool], kind: str, write: bool = True,
                 sleeps: bool = False) -> None: ...
    def point(self, kind: str, write: bool = True) -> None: ...
    def notify_all(self) -> None: ...
    def ticket(self) -> int: ...
    def sleep(self, ticket: int, kind: str) -> None: ...
    def wake_up(self) -> None: ...


class Handle(Protocol):
    name: str

    def join(self, timeout: float | None = None) -> None: ...


class Runtime(Protocol):
    name: str
    current: Any  # the running task's object, or None for "the calling OS thread's own"

    def lock_cell(self, owner: object, label: str) -> LockCell: ...
    def waitq(self, owner: object) -> WaitQueue: ...
    def current_task(self) -> Any: ...
    def spawn(self, fn: Callable[..., Any], args: tuple, name: str | None) -> Handle: ...
    def point(self, owner: object, kind: str, write: bool = True) -> None: ...


# --------------------------------------------------------------------------- threads


class _ThreadWaitQueue:
    """A condition variable that serves its waiters first come, first served.

    A task whose condition holds goes on at once only if no task waiting longer could go on
    too; otherwise it queues behind them. So a writer that lets go of an rwlock and takes it
    again at once cannot starve the readers that were already waiting (the kernel's queued
    rwlock and rwsem hand off to waiting readers the same way), while a task whose condition
    holds never waits behind one whose condition does not. ``point`` is free: real threads
    need no scheduling points.
    """

    __slots__ = ("_cond", "__enter__", "__exit__", "notify_all", "_queue", "_wakes")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.__enter__ = self._cond.__enter__
        self.__exit__ = self._cond.__exit__
        self.notify_all = self._cond.notify_all
        self._queue: list[list[Callable[[], bool]]] = []  # waiting tasks' conditions, oldest first
        self._wakes = 0  # wake_up() calls so far: a sleeper's ticket is the count it saw

    def _older_can_go(self, until: object = None) -> bool:
        for entry in self._queue:
            if entry is until:
                return False
            if entry[0]():
                return True
        return False

    def busy(self) -> bool:
        """Whether a waiting task could go on now (one arriving should queue behind it)."""
        return bool(self._queue) and self._older_can_go()

    def wait_for(self, pred: Callable[[], bool], kind: str, write: bool = True,
                 sleeps: bool = False) -> None:
        # (``sleeps`` changes nothing here: a real waiter that nobody notifies hangs already)
        if pred() and not (self._queue and self._older_can_go()):
            return
        entry = [pred]
        self._queue.append(entry)
        try:
            while True:
                if pred():
                    if not self._older_can_go(entry):
                        break
                    self._cond.notify_all()  # (so the older one that can go is awake)
                self._cond.wait()
        finally:
            self._queue.remove(entry)
            self._cond.notify_all()  # the ones behind us look again

    def point(self, kind: str, write: bool = True) -> None:
        return None

    def ticket(self) -> int:
        return self._wakes

    def sleep(self, ticket: int, kind: str) -> None:
        """Sleep until a wake-up newer than ``ticket`` (at once if one came already)."""
        while self._wakes == ticket:
            self._cond.wait()

    def wake_up(self) -> None:
        self._wakes += 1
        self._cond.notify_all()


class _TaskState(threading.local):
    """Per-thread scratch space; lockdep stores its held-lock stack in ``lockdep``."""

    def __init__(self) -> None:
        self.lockdep: Any = None
        self.irq = 0  # interrupt state bits (kvmlock.irq): this thread is its own CPU
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
        self.current = None  # each OS thread is its own task: current_task() is a thread-local

    def lock_cell(self, owner: object, label: str) -> LockCell:
        return threading.Lock()

    def waitq(self, owner: object) -> WaitQueue:
        return _ThreadWaitQueue()

    def current_task(self) -> Any:
        return self._tls

    def spawn(self, fn: Callable[..., Any], args: tuple = (), name: str | None = None) -> Handle:
        box: list[BaseException] = []
        world = _WORLD.get()

        def run() -> None:
            _WORLD.set(world)  # the child lives in its spawner's world
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


# --------------------------------------------------------------------------- worlds

#: Called at the end of every spawned task (both worlds), e.g. lockdep's held-at-exit check.
task_exit_hooks: list[Callable[[], None]] = []


class World:
    """A runtime and lockdep's state for it: everything a primitive needs to know where it runs.

    Made by whoever opens a world (the explorer, once per exploration; ``lockdep.isolated``)
    and entered with :func:`enter`. ``lockdep`` is lockdep's ``State``, opaque here.
    """

    __slots__ = ("rt", "lockdep", "__weakref__")

    def __init__(self, rt: Runtime, lockdep: Any = None) -> None:
        self.rt = rt
        self.lockdep = lockdep

    def __repr__(self) -> str:
        return f"<World {self.rt.name}>"


THREADS = ThreadRuntime()
#: The world of real threads that no one placed elsewhere (lockdep gives it its state).
THREADS_WORLD = World(THREADS)
_WORLD: ContextVar[World] = ContextVar("kvmlock.world", default=THREADS_WORLD)

#: The world in force here (the hot path calls it: a bound C method, no Python frame).
world: Callable[[], World] = _WORLD.get


def enter(w: World) -> Token:
    """Make ``w`` the world of the calling context; :func:`leave` with the token restores."""
    if not isinstance(w, World):
        raise TypeError(f"enter: expected a World, got {type(w).__name__}")
    return _WORLD.set(w)


def leave(token: Token) -> None:
    """Return to the world in force before the matching :func:`enter`."""
    _WORLD.reset(token)


def active() -> Runtime:
    """The runtime in force here: what a primitive asks for its cell or wait queue when it
    is built (a model builds thousands per execution, so this is a plain function: reading
    ``RT`` below costs ten times as much, a failed module lookup first)."""
    return _WORLD.get().rt


def __getattr__(name: str) -> Any:
    if name == "RT":  # the active runtime (as :func:`active`)
        return _WORLD.get().rt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def current_task() -> Any:
    """The running task's private state object."""
    return _WORLD.get().rt.current or THREADS._tls


def install(rt: Runtime) -> Runtime:
    """Run ``rt`` in the calling context (keeping lockdep's state); returns the previous
    runtime, so a caller can restore it. Prefer :func:`enter` with a :class:`World`."""
    prev = _WORLD.get()
    _WORLD.set(THREADS_WORLD if rt is THREADS and prev.lockdep is THREADS_WORLD.lockdep
               else World(rt, prev.lockdep))
    return prev.rt


def spawn(fn: Callable[..., Any], *args: Any, name: str | None = None) -> Handle:
    """Start ``fn(*args)`` as a task of the active world: a real thread, or an explored task."""
    return _WORLD.get().rt.spawn(fn, args, name)
