"""``queue`` under the explorer: each queue operation is one visible operation.

``queue.Queue`` is written on a lock and three conditions; explored through them, a
producer/consumer pair interleaves their lock and condition steps, and dpor explores every
order of those steps although a put and a get of a non-empty FIFO queue commute. So inside an
exploration the methods of ``Queue`` (hence ``LifoQueue``, ``PriorityQueue`` and subclasses)
and of ``SimpleQueue`` are replaced: ``put``, ``get``, ``qsize``, ``empty``, ``full``,
``task_done`` and ``join`` each stop once, at an operation whose dependence is exactly what its
semantics allows, and then act on the queue's storage (``_put``/``_get``, so a subclass's own
storage is used) with the real methods' results and exceptions. ``Queue.shutdown()`` (CPython
3.13 on) is refused inside an exploration with an error naming it: the replaced methods do not
model a shut-down queue, and exploring on as if it were open would explore another program.

A FIFO queue's operations are *compound* (several keys each, see
``strategies/events.conflict``): with ``k`` the number of earlier puts (gets, task_dones),

* the ``k``-th put writes the tail ``T`` and slot ``S[k]``; on a bounded queue (``maxsize``
  ``m``) it also reads ``F[k-m]``, the room the ``(k-m)``-th get made;
* the ``k``-th get writes the head ``H``, reads ``S[k]`` and (bounded) writes ``F[k]``;
* ``qsize()``, ``empty()``, ``full()``, and a ``get_nowait``/``put_nowait``/timed wait that
  finds the queue empty/full, read ``H`` and ``T``;
* the ``d``-th ``task_done`` writes the count of task_dones ``D`` and reads ``S[d]``; one that
  finds no unfinished task (ValueError) reads ``D`` and ``T``; ``join`` reads ``T`` and ``D``.

So two puts (two gets) never commute; a put and a get commute unless the get takes that put's
item (on an empty queue the put enables the get) or, bounded, the put needs the room that get
makes; a look at the count is ordered against every put and get. Which form an operation
takes, and its ``k``, depend on the queue's state; a task stopped at a queue operation gets
its record re-made whenever the queue changes, and every such change is made by an operation
that conflicts with the old record, so sleep sets stay sound. ``LifoQueue``,
``PriorityQueue`` and a subclass with storage of its own have one key: every put, get and
task_done writes it (a put and a get of a non-empty stack do not commute; for a priority queue
whether they do depends on the items), looks read it.

Blocking is no event: a blocking get is one operation, enabled while the queue is not empty,
so an execution where the consumer reached ``get`` before the producer's put and waited is the
same execution as one where it arrived later. A timed or non-blocking operation never waits:
it is explored at each place it can run (before the put, it raises ``Empty``; a timed one moves
the exploration's clock on by its timeout, as a timed lock acquire does).
"""

from __future__ import annotations

import _thread
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from kvmlock.explore import pythreads as _pt
from kvmlock.explore.records import ACQ_NONE, ACQ_WAIT, Pending, _made, _record
from kvmlock.explore.runtime import SimRuntime, Task

_H, _T, _D, _S, _F = range(5)
_BASE_BITS = 24


def _key(base: int, part: int, index: int = 0) -> int:
    """A key of its own for part ``part`` (index ``index``) of the queue whose runtime key is
    ``base``: negative, so never a runtime key, and the same in every execution."""
    return -1 - ((((index << 3) | part) << _BASE_BITS) | base)


class _QState:
    """One explored queue's counts and keys, for one execution (the queue itself is not
    referenced from here through anything but its storage's bound methods)."""

    __slots__ = ("rt", "base", "label", "fifo", "m", "puts", "gets", "dones", "stopped",
                 "size", "h", "t", "d", "look", "done_fail", "join_obj", "nonempty",
                 "notfull", "alldone", "unfinished")

    def __init__(self, rt: SimRuntime, owner: object, label: str, fifo: bool, m: int,
                 size: Callable[[], int], unfinished: Callable[[], int]) -> None:
        self.rt = rt
        self.base = base = rt.key(owner)
        self.label = label
        self.fifo = fifo = fifo and base < 1 << _BASE_BITS
        self.m = m
        self.puts = self.gets = self.dones = 0
        self.stopped: dict[Task, tuple[str, bool]] = {}  # task stopped here -> (kind, waits)
        self.size = size
        self.unfinished = unfinished
        if fifo:
            self.h, self.t, self.d = _key(base, _H), _key(base, _T), _key(base, _D)
            self.look = ((self.h, False), (self.t, False))
            self.done_fail = ((self.d, False), (self.t, False))
            self.join_obj = ((self.t, False), (self.d, None))
        self.nonempty = lambda: size() > 0
        self.notfull = lambda: size() < m
        self.alldone = lambda: unfinished() == 0

    # ------------------------------------------------------------------ records
    def record(self, t: Task, kind: str, waits: bool) -> Pending:
        """The operation ``kind`` of task ``t`` on the queue as it is now."""
        m = self.m
        if not self.fifo:
            base = self.base
            write = kind in ("put", "get", "put_nowait", "get_nowait", "put timeout",
                             "get timeout", "task_done")
            key = (t.tid, base, write, kind, self.label, ACQ_WAIT if waits else ACQ_NONE,
                   waits, -1)
            return _made.get(key) or _record(key)
        if kind.startswith("put"):
            k = self.puts
            if waits or m <= 0 or self.size() < m:
                obj = ((self.t, True), (_key(self.base, _S, k), True))
                if m > 0 and k >= m:  # (a wait comes after the room is made: no race)
                    obj += ((_key(self.base, _F, k - m), None if waits else False),)
            else:
                obj = self.look
        elif kind.startswith("get"):
            k = self.gets
            if waits or self.size() > 0:
                obj = ((self.h, True), (_key(self.base, _S, k), None if waits else False))
                if m > 0:
                    obj += ((_key(self.base, _F, k), True),)
            else:
                obj = self.look
        elif kind == "task_done":
            d = self.dones
            obj = (((self.d, True), (_key(self.base, _S, d), False))
                   if self.unfinished() > 0 else self.done_fail)
        elif kind == "join":
            obj = self.join_obj
        else:
            obj = self.look
        write = obj[0][1]
        key = (t.tid, obj, write, kind, self.label, ACQ_WAIT if waits else ACQ_NONE, waits, -1)
        return _made.get(key) or _record(key)

    def stop(self, kind: str, pred: Callable[[], bool] | None) -> Task:
        """Stop the running task at ``kind``; returns when it executes."""
        rt = self.rt
        t = rt.current
        if rt.aborting and pred is None:
            # the execution is being torn down (a put from a collected executor's callback):
            # nothing will run after this, so the operation just acts
            return t
        waits = pred is not None
        stopped = self.stopped
        stopped[t] = (kind, waits)
        rt.stop(t, self.record(t, kind, waits), pred, None)
        del stopped[t]
        return t

    def changed(self) -> None:
        """The queue changed: the tasks stopped at it get their records re-made."""
        for t, (kind, waits) in self.stopped.items():
            t.op = self.record(t, kind, waits)


def _queues(rt: SimRuntime) -> dict[int, _QState]:
    st = _pt._states(rt)
    got = st.get("queues")
    if got is None:
        got = st["queues"] = {}
    return got


def _state(q: object) -> _QState | None:
    """The explored state of queue ``q`` in the calling OS thread's execution, if it was made
    there (a queue made elsewhere keeps its real methods)."""
    rt = getattr(_bound, "rt", None)
    if rt is None:
        return None
    got = getattr(rt, "_pythreads", None)
    if got is None:
        return None
    qs = got.get("queues")
    return qs.get(id(q)) if qs is not None else None


def _advance(st: _QState, timeout: float | None) -> None:
    """A timed wait ran out: its time passed on the exploration's clock."""
    if timeout:
        _pt._states(st.rt)["clock"] += timeout


_bound = _pt._bound


def _condition_maker() -> Callable[[Any], threading.Condition]:
    """``threading.Condition(lock)`` for a plain lock, made without its ``__init__``, which
    tries three attributes a plain lock lacks, an exception each: 20,000 instructions a
    condition, and an explored queue makes three (its own lock's, never used by the replaced
    methods, kept real so the queue works after the exploration) in every execution. Used only
    if, on this Python, it gives the same attributes as the real constructor; else that."""
    cls = threading.Condition
    new = cls.__new__

    def make(lock: Any) -> threading.Condition:
        c = new(cls)
        c.__dict__.update(_lock=lock, acquire=lock.acquire, release=lock.release,
                          _waiters=deque())
        return c

    probe = _thread.allocate_lock()
    return make if vars(make(probe)) == vars(cls(probe)) else cls


_Condition = _condition_maker()


def _label(what: str) -> str:
    """The queue's name in traces: after its creation site, as lockdep names a lock there."""
    site = _pt._site(1)
    return _pt._plain_name(what, site) if site is not None else what


_FIFO_HOOKS = (queue.Queue._init, queue.Queue._qsize, queue.Queue._put, queue.Queue._get)


def _is_fifo(q: queue.Queue) -> bool:
    cls = type(q)
    return (cls._init, cls._qsize, cls._put, cls._get) == _FIFO_HOOKS


# --------------------------------------------------------------------------- queue.Queue
_ORIG: dict[str, Any] = {}


def _make_init(prev: Callable[..., None]) -> Callable[..., None]:
    _ORIG["Queue.__init__"] = prev

    def __init__(self: queue.Queue, maxsize: int = 0) -> None:  # noqa: N807
        rt = getattr(_bound, "rt", None)
        if rt is None:
            prev(self, maxsize)
            return
        self.maxsize = maxsize
        self._init(maxsize)
        # the replaced methods use neither the lock nor the conditions; they are real ones, so
        # the queue still works, with its items, after the exploration
        self.mutex = mutex = _thread.allocate_lock()
        self.not_empty = _Condition(mutex)
        self.not_full = _Condition(mutex)
        self.all_tasks_done = _Condition(mutex)
        self.unfinished_tasks = 0
        if _HAS_SHUTDOWN:
            # CPython 3.13 added Queue.shutdown(); its __init__ sets this flag, which the real
            # get/put read (a kept queue must work after the exploration)
            self.is_shutdown = False
        label = _label(type(self).__name__)
        _queues(rt)[id(self)] = _QState(
            rt, self, label, _is_fifo(self), maxsize, self._qsize,
            lambda: self.unfinished_tasks)

    __init__.__doc__ = prev.__doc__
    return __init__


#: CPython 3.13 added ``Queue.shutdown()`` (and the ``is_shutdown`` flag ``__init__`` sets).
_HAS_SHUTDOWN = hasattr(queue.Queue, "shutdown")


def _q_shutdown(self: queue.Queue, immediate: bool = False) -> None:
    """Refused on an explored queue: the replaced get/put/join do not model a shut-down
    queue (``ShutDown`` raised by later calls, waiters woken), so exploring past it would
    explore a queue that does not behave as the real one."""
    if _state(self) is None:
        return _ORIG["Queue.shutdown"](self, immediate)
    raise RuntimeError(
        f"{type(self).__name__}.shutdown() under the explorer: shutting down a queue is not "
        f"explored (its ShutDown exceptions and woken waiters are not modelled); end the "
        f"consumers with a sentinel item instead")


def _check_timeout(block: bool, timeout: float | None) -> bool:
    """Whether the call waits without a bound; refuses a negative timeout as the real one."""
    if not block:
        return False
    if timeout is None:
        return True
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return False


def _kind(what: str, block: bool, timeout: float | None) -> str:
    return what if block and timeout is None else (
        f"{what} timeout" if block else f"{what}_nowait")


def _q_put(self: queue.Queue, item: Any, block: bool = True, timeout: float | None = None) -> None:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.put"](self, item, block, timeout)
    if st.m > 0:
        waits = _check_timeout(block, timeout)
        st.stop(_kind("put", block, timeout), st.notfull if waits else None)
        if self._qsize() >= self.maxsize:
            _advance(st, timeout if block else None)
            raise queue.Full
    else:
        st.stop("put", None)
    self._put(item)
    self.unfinished_tasks += 1
    st.puts += 1
    if st.stopped:
        st.changed()
    return None


def _q_get(self: queue.Queue, block: bool = True, timeout: float | None = None) -> Any:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.get"](self, block, timeout)
    waits = _check_timeout(block, timeout)
    st.stop(_kind("get", block, timeout), st.nonempty if waits else None)
    if not self._qsize():
        _advance(st, timeout if block else None)
        raise queue.Empty
    item = self._get()
    st.gets += 1
    if st.stopped:
        st.changed()
    return item


def _q_qsize(self: queue.Queue) -> int:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.qsize"](self)
    st.stop("qsize", None)
    return self._qsize()


def _q_empty(self: queue.Queue) -> bool:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.empty"](self)
    st.stop("empty", None)
    return not self._qsize()


def _q_full(self: queue.Queue) -> bool:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.full"](self)
    if self.maxsize <= 0:
        return False  # never full, whatever happens: nothing to order it against
    st.stop("full", None)
    return 0 < self.maxsize <= self._qsize()


def _q_task_done(self: queue.Queue) -> None:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.task_done"](self)
    st.stop("task_done", None)
    unfinished = self.unfinished_tasks - 1
    if unfinished < 0:
        raise ValueError("task_done() called too many times")
    self.unfinished_tasks = unfinished
    st.dones += 1
    if st.stopped:
        st.changed()
    return None


def _q_join(self: queue.Queue) -> None:
    st = _state(self)
    if st is None:
        return _ORIG["Queue.join"](self)
    st.stop("join", st.alldone)
    return None


# --------------------------------------------------------------------------- SimpleQueue
_PY_SIMPLE = queue._PySimpleQueue  # type: ignore[attr-defined]


def _make_simple_init(prev: Callable[..., None]) -> Callable[..., None]:
    _ORIG["SimpleQueue.__init__"] = prev

    def __init__(self: Any) -> None:  # noqa: N807
        rt = getattr(_bound, "rt", None)
        if rt is None:
            prev(self)
            return
        self._queue = dq = deque()
        # a real semaphore counting the items (kept so by the replaced methods), so the queue
        # still works after the exploration
        self._count = sem = threading.Semaphore.__new__(threading.Semaphore)
        sem._cond = _Condition(_thread.allocate_lock())
        sem._value = 0
        label = _label("SimpleQueue")
        _queues(rt)[id(self)] = _QState(rt, self, label, True, 0, dq.__len__, lambda: 1)

    return __init__


def _s_put(self: Any, item: Any, block: bool = True, timeout: float | None = None) -> None:
    st = _state(self)
    if st is None:
        return _ORIG["SimpleQueue.put"](self, item, block, timeout)
    st.stop("put", None)
    self._queue.append(item)
    self._count._value += 1
    st.puts += 1
    if st.stopped:
        st.changed()
    return None


def _s_get(self: Any, block: bool = True, timeout: float | None = None) -> Any:
    st = _state(self)
    if st is None:
        return _ORIG["SimpleQueue.get"](self, block, timeout)
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    waits = block and timeout is None
    st.stop(_kind("get", block, timeout), st.nonempty if waits else None)
    if not self._queue:
        _advance(st, timeout if block else None)
        raise queue.Empty
    item = self._queue.popleft()
    self._count._value -= 1
    st.gets += 1
    if st.stopped:
        st.changed()
    return item


def _s_qsize(self: Any) -> int:
    st = _state(self)
    if st is None:
        return _ORIG["SimpleQueue.qsize"](self)
    st.stop("qsize", None)
    return len(self._queue)


def _s_empty(self: Any) -> bool:
    st = _state(self)
    if st is None:
        return _ORIG["SimpleQueue.empty"](self)
    st.stop("empty", None)
    return not self._queue


def _keep(name: str, ours: Callable[..., Any]) -> Callable[[Any], Any]:
    """A maker that notes the replaced method (the fallback for queues made elsewhere)."""

    def make(prev: Any) -> Any:
        _ORIG[name] = prev
        ours.__name__, ours.__qualname__ = prev.__name__, prev.__qualname__
        ours.__doc__ = prev.__doc__
        return ours

    return make


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """(class, method, maker) for pythreads' installer."""
    return [
        (queue.Queue, "__init__", _make_init),
        (queue.Queue, "put", _keep("Queue.put", _q_put)),
        (queue.Queue, "get", _keep("Queue.get", _q_get)),
        (queue.Queue, "qsize", _keep("Queue.qsize", _q_qsize)),
        (queue.Queue, "empty", _keep("Queue.empty", _q_empty)),
        (queue.Queue, "full", _keep("Queue.full", _q_full)),
        (queue.Queue, "task_done", _keep("Queue.task_done", _q_task_done)),
        (queue.Queue, "join", _keep("Queue.join", _q_join)),
    ] + ([(queue.Queue, "shutdown", _keep("Queue.shutdown", _q_shutdown))]
         if _HAS_SHUTDOWN else []) + [
        (_PY_SIMPLE, "__init__", _make_simple_init),
        (_PY_SIMPLE, "put", _keep("SimpleQueue.put", _s_put)),
        (_PY_SIMPLE, "get", _keep("SimpleQueue.get", _s_get)),
        (_PY_SIMPLE, "qsize", _keep("SimpleQueue.qsize", _s_qsize)),
        (_PY_SIMPLE, "empty", _keep("SimpleQueue.empty", _s_empty)),
        (queue, "SimpleQueue", lambda prev: _PY_SIMPLE),
    ]
