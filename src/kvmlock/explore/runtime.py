"""The explorer's runtime: model code runs as greenlet tasks that stop at every visible operation.

A *visible operation* is a step another task could observe: a lock cell acquire/release, a
wait-queue ``wait_for``/``point``, ``Runtime.point`` (atomics, ``yield_point``), spawn and join.
Each task runs until it reaches its next visible operation and records it as *pending*; the
scheduler then picks which task's pending operation executes next. Code between two visible
operations runs without interruption, so a schedule is a list of task ids, one per visible
operation, whatever the Python version or bytecode.

The decision is taken in the greenlet of the task that just stopped, and when that same task
goes on no greenlet switch happens at all: that is what keeps an execution cheap. Tasks run on
pooled greenlets that outlive them: a greenlet's first start costs more than a dozen switches
(it gets its own frame stack), and an exploration starts a few tasks in every execution. A pending
operation carries an *enabled* predicate (``wait_for``'s condition, "the cell is free" for a
blocking acquire), so a task is never scheduled only to find its lock taken; when no live task
is enabled the execution is a deadlock.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import Context
from types import MappingProxyType
from typing import Any

from greenlet import GreenletExit, getcurrent, greenlet

from kvmlock import runtime as _rt
from kvmlock.explore.records import (
    ACQ_LOCK,
    ACQ_NONE,
    ACQ_RELEASE,
    ACQ_TRY,
    ACQ_WAIT,
    LENIENT,
    STRICT,
    Finished,
    Pending,
    Plan,
    ReplayMismatch,
    _made,
    _record,
    pending,
)

_new = tuple.__new__

#: Returned to the hub by a task that ends the execution early (failure, deadlock, hang).
_ABORT = object()


_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Frames in these places are the library's, not the user's, when locating a source line.
_STDLIB = os.path.dirname(os.path.abspath(threading.__file__))
_INTERNAL = tuple(
    os.path.join(_PKG, p) for p in ("sync", "runtime.py", "irq.py", "explore", "lockdep")
) + tuple(  # the standard library's threading layers, which plain threading programs go through
    os.path.join(_STDLIB, p)
    for p in ("threading.py", "queue.py", "concurrent" + os.sep, "asyncio" + os.sep)
)


def user_frame(frame: Any) -> Any:
    """The first frame outside kvmlock's primitives, runtime, explorer and lockdep."""
    f = frame
    while f is not None:
        fn = f.f_code.co_filename
        if not fn.startswith(_INTERNAL) and not fn.startswith("<frozen"):
            if os.path.basename(os.path.dirname(fn)) != "greenlet":
                return f
        f = f.f_back
    return None


def where_of(frame: Any) -> tuple[str, str]:
    """``("file.py:12", "source text")`` of the user's frame, for trace tables."""
    import linecache

    f = user_frame(frame)
    if f is None:
        return "", ""
    fn = f.f_code.co_filename
    line = f.f_lineno
    text = linecache.getline(fn, line).strip()
    return f"{os.path.basename(fn)}:{line}", text


class Task:
    """One explored task; also the object ``runtime.current_task()`` returns inside it."""

    __slots__ = (
        "tid", "name", "g", "fn", "args", "parent", "lockdep", "irq", "victim", "irq_by",
        "done", "starting", "op", "p_pred", "p_where", "p_wq", "try_ok",
        "spin", "spinning", "spin_counts", "active",
    )

    def __init__(self, tid: int, name: str, fn: Callable[..., Any], args: tuple,
                 parent: Task | None) -> None:
        self.tid = tid
        self.name = name
        self.fn = fn
        self.args = args
        self.parent = parent
        self.lockdep: Any = None
        self.irq = 0  # interrupt state bits (kvmlock.irq)
        self.victim: Task | None = None  # an interrupt: the task whose CPU it interrupts
        self.irq_by: Task | None = None  # the interrupt running on this task's CPU now
        self.done = False
        self.starting = parent is not None
        self.g: Any = None
        self.active = False  # its greenlet is inside it (started, not yet unwound or ended)
        #: the visible operation it stopped at (None until it reaches its first)
        self.op: Pending | None = None
        self.p_pred: Callable[[], bool] | None = None
        self.p_where: tuple[str, str] = ("", "")
        self.p_wq: Any = None
        self.try_ok = False
        # spin detection: object key -> (writes to it when last read, program point of the
        # read, the task's frames' state there if it was a re-read, else None)
        self.spin: dict[int, tuple[int, Any, Any]] = {}
        self.spinning = False
        self.spin_counts: list[tuple[int, int]] = []

    def __repr__(self) -> str:
        return f"<task {self.tid} {self.name}>"


_cell_ops: dict[tuple[int, int, str], tuple[Pending, Pending, Pending]] = {}

#: (queue key, label) -> the records of its points and of its waits, each write? -> kind ->
#: task id -> record (the same records :func:`records.pending` makes: a write of 1 finds
#: True's, as there). The queue of an owner made in the same order in the next execution has
#: the same key and label, so a point finds its record with lookups of a bool, a str and an
#: int instead of hashing the record's eight fields.
_QUEUE_RECORDS: dict[tuple[int, str], tuple[dict, dict]] = {}

#: The empty map a cell's operations and a queue's sleepers start as (read-only: the first
#: entry gives the primitive a dict of its own).
_NOBODY: Mapping[Any, Any] = MappingProxyType({})


class SimCell:
    """A binary lock whose every call is a visible operation; contention parks the task."""

    __slots__ = ("rt", "key", "label", "holder", "ops")

    def __init__(self, rt: SimRuntime, key: int, label: str) -> None:
        self.rt = rt
        self.key = key
        self.label = label
        self.holder: Task | None = None
        #: task -> its operations (a dict of its own from the first operation)
        self.ops: Mapping[int, tuple[Pending, Pending, Pending]] = _NOBODY

    def _free(self) -> bool:
        return self.holder is None

    def _ops(self, t: Task) -> tuple[Pending, Pending, Pending]:
        """Task ``t``'s lock, trylock and unlock records (shared between executions)."""
        k, lb, tid = self.key, self.label, t.tid
        o = _cell_ops.get((tid, k, lb))
        if o is None:
            if len(_cell_ops) >= 1 << 16:
                _cell_ops.clear()
            o = _cell_ops[tid, k, lb] = (
                pending(tid, k, "lock", True, lb, ACQ_LOCK, True),
                pending(tid, k, "trylock", True, lb, ACQ_TRY, False),
                pending(tid, k, "unlock", True, lb, ACQ_RELEASE, False))
        if self.ops is _NOBODY:
            self.ops = {}
        self.ops[tid] = o  # type: ignore[index]
        return o

    def acquire(self, blocking: bool = True) -> bool:
        rt = self.rt
        t = rt.current
        ops = self.ops.get(t.tid) or self._ops(t)
        if blocking:
            rt.stop(t, ops[0], self._free, self)
        else:
            rt.stop(t, ops[1], None, self)
            if self.holder is not None:
                t.try_ok = False
                return False
            t.try_ok = True
        self.holder = t
        return True

    def release(self) -> None:
        if self.holder is None:
            raise RuntimeError(f"release of unlocked lock {self.label!r}")
        rt = self.rt
        t = rt.current
        rt.stop(t, (self.ops.get(t.tid) or self._ops(t))[2], None, self)
        self.holder = None

    def locked(self) -> bool:
        return self.holder is not None


class SimWaitQueue:
    """A monitor whose ``with`` is free: a task cannot be preempted between visible steps.

    ``wait_for`` polls: its task is enabled whenever its condition holds. A *sleeping* poll
    (``sleeps=True``: a primitive that sleeps until its release wakes it, as an rw_semaphore
    does) also needs a wake-up: the task could have checked its condition, found it false and
    gone to sleep right after its previous step, so if it finds the condition true with no
    ``notify_all`` of this queue since then, that sleep would last for ever, and the execution
    fails as a lost wake-up. Both looks are taken in the waiting task's own steps, so a
    replay sees the same, and schedules are what they are without the check. The check is as
    good as the state at the wait's start: a condition made false between the waiter's previous
    step and its wait, by a step independent of the former, is seen false only in schedules
    that put that step first, which partial-order reduction need not explore. ``sleep`` is the
    kernel's sleep on a wait queue: its task is enabled only once a ``wake_up`` of this queue
    came after its ticket, whatever the condition says then, and a wake-up with nobody
    asleep is lost -- so a forgotten wake-up leaves the sleeper blocked (reported as a lost
    wake-up), and a sleeper that does not re-check its condition after waking runs on with
    it false. Ticket, sleep and wake-up are each atomic with a visible write of the queue's
    key, so partial-order reduction orders every wake-up against every sleeper's ticket.
    """

    __slots__ = ("rt", "key", "label", "owner", "wakes", "notifies", "sleepers", "recs")

    def __init__(self, rt: SimRuntime, key: int, label: str, owner: object) -> None:
        self.rt = rt
        self.key = key
        self.label = label
        self.owner = owner
        self.wakes = 0  # wake-ups so far; a ticket is the count its sleeper saw
        self.notifies = 0  # notify_all() calls so far (what a sleeping wait_for needs)
        #: task asleep here -> its ticket (a dict of its own from the first sleep: most
        #: queues never have a sleeper, and a model builds dozens per execution)
        self.sleepers: Mapping[Task, int] = _NOBODY
        r = _QUEUE_RECORDS.get((key, label))
        if r is None:
            if len(_QUEUE_RECORDS) >= 1 << 14:
                _QUEUE_RECORDS.clear()
            r = _QUEUE_RECORDS[key, label] = ({}, {})
        #: its point and wait records, found without hashing their fields (_QUEUE_RECORDS)
        self.recs = r

    def __enter__(self) -> SimWaitQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def wait_for(self, pred: Callable[[], bool], kind: str, write: bool = True,
                 sleeps: bool = False) -> None:
        rt = self.rt
        t = rt.current
        try:
            rec = self.recs[1][write][kind][t.tid]
        except (KeyError, TypeError):
            rec = self._rec(t.tid, kind, write, ACQ_WAIT)
        if sleeps and not pred():
            seen = self.notifies
            rt.stop(t, rec, pred, self)
            if self.notifies == seen:
                self._lost(t)
            return
        rt.stop(t, rec, pred, self)

    def _lost(self, t: Task) -> None:
        """``t`` went on from a sleeping wait no ``notify_all`` came after: it would sleep
        for ever. Ends the execution as a deadlock, with ``t`` described as a sleeper."""
        if self.sleepers is _NOBODY:
            self.sleepers = {}
        self.sleepers[t] = self.wakes  # type: ignore[index]
        self.rt.lost = t
        self.rt._abort("deadlock")

    def point(self, kind: str, write: bool = True) -> None:
        rt = self.rt
        t = rt.current
        try:
            rec = self.recs[0][write][kind][t.tid]
        except (KeyError, TypeError):
            rec = self._rec(t.tid, kind, write, ACQ_NONE)
        rt.stop(t, rec, None, self)

    def _rec(self, tid: int, kind: str, write: bool, acq: int) -> Pending:
        """The record of a point (``acq`` ACQ_NONE) or wait (ACQ_WAIT) here, kept for the
        queues with this key and label in later executions."""
        blocking = acq == ACQ_WAIT
        key = (tid, self.key, write, kind, self.label, acq, blocking, -1)
        rec = _made.get(key) or _record(key)
        self.recs[blocking].setdefault(write, {}).setdefault(kind, {})[tid] = rec
        return rec

    def notify_all(self) -> None:
        # polling waits look at their condition at every step anyway; a sleeping one asks
        # whether any came after it started waiting
        self.notifies += 1

    def _atomic_with_own_write(self, kind: str) -> None:
        """Unless the running task's last visible operation wrote this queue (then what
        follows is atomic with it: no task ran since), make ``kind`` one."""
        t = self.rt.current
        op = t.op
        if op is None or op.obj != self.key or not op.write:
            self.rt.visible(t, self.key, kind, True, None, self.label, ACQ_NONE, self)

    def ticket(self) -> int:
        self._atomic_with_own_write("set_current_state")
        return self.wakes

    def sleep(self, ticket: int, kind: str) -> None:
        rt = self.rt
        t = rt.current

        def woken() -> bool:
            return self.wakes != ticket

        if self.sleepers is _NOBODY:
            self.sleepers = {}
        self.sleepers[t] = ticket  # type: ignore[index]
        rt.visible(t, self.key, kind, True, woken, self.label, ACQ_WAIT, self)
        del self.sleepers[t]  # type: ignore[attr-defined]

    def wake_up(self) -> None:
        self._atomic_with_own_write("wake_up")
        self.wakes += 1


class SimHandle:
    """What ``kvmlock.spawn`` returns inside an execution; ``join`` is a visible operation."""

    __slots__ = ("task", "rt", "name")

    def __init__(self, task: Task, rt: SimRuntime) -> None:
        self.task = task
        self.rt = rt
        self.name = task.name

    def _ended(self) -> bool:
        return self.task.done

    def join(self, timeout: float | None = None) -> None:
        rt = self.rt
        t = rt.current
        task = self.task
        # (SimRuntime.visible's record, inlined: every join of every execution makes one)
        key = (t.tid, None, False, "join", task.name, ACQ_NONE, True, task.tid)
        rt.stop(t, _made.get(key) or _record(key), self._ended, task)


def _label_of(owner: object) -> str:
    name = getattr(owner, "name", None)
    return name if isinstance(name, str) and name else type(owner).__name__


class _Shared:
    """The owner of ``yield_point()`` operations: one object standing for plain shared state."""

    name = "shared"


SHARED = _Shared()

_NO_PLAN = Plan()


class SimRuntime:
    """Runs one execution of a body under a strategy; see the module docstring."""

    name = "explore"

    # Slots: the scheduler reads these at every step, and an instance dict with this many
    # keys would not get CPython's fast attribute access (``__dict__`` takes any others).
    __slots__ = (
        "strategy", "choose", "tell", "prefix", "check", "report_from", "nprefix", "max_steps",
        "tracing", "tasks", "live", "current", "nsteps", "choices", "preempt_steps", "trace",
        "keys", "_owners", "cells", "outcome", "failed_task", "exc", "exc_where", "aborting",
        "spin_detect", "wcount", "hub", "pool", "world", "last", "last_op", "quick", "lost",
        "__dict__", "__weakref__",
    )

    def __init__(self, strategy: Any, plan: Plan = _NO_PLAN, max_steps: int = 10_000,
                 tracing: bool = False) -> None:
        self.strategy = strategy
        self.choose = strategy.choose
        # told of each executed step, unless the strategy does not listen
        tell = getattr(type(strategy), "executed", None)
        self.tell = None if tell is None or getattr(tell, "quiet", False) else strategy.executed
        #: task ids the strategy wants for the first steps (see records.Plan): they are
        #: replayed without asking it, checked as ``plan.check`` says
        self.prefix: Sequence[int] = plan.prefix
        self.check = plan.check
        self.report_from = len(plan.prefix) if plan.report_from is None else plan.report_from
        if self.tell is None:
            self.report_from = 1 << 62  # nobody listens
        self.nprefix = min(len(plan.prefix), max_steps)  # (a step past max_steps ends it)
        self.max_steps = max_steps
        self.tracing = tracing
        #: the steps before this one are prefix steps that report nothing and draw no trace
        #: (see ``stop``)
        self.quick = 0 if tracing else min(self.nprefix, self.report_from)
        self.tasks: list[Task] = []
        self.live: list[Task] = []
        self.current: Task | None = None
        self.nsteps = 0
        self.choices: list[int] = []
        self.preempt_steps: list[int] = []  # steps where a runnable task was switched away
        self.trace: list[tuple[int, str, str, tuple[str, str]]] = []
        self.keys: dict[int, int] = {}
        self._owners: list[object] = []
        self.cells: list[SimCell] = []
        # None (ran to the end) | "deadlock" | "hang" | "exception" | "pruned" (the strategy
        # gave up on it) | "error" (a replayed schedule did not fit) | "interrupt" (Ctrl-C)
        self.outcome: str | None = None
        self.failed_task: Task | None = None
        self.exc: BaseException | None = None
        self.exc_where: tuple[str, str] = ("", "")
        self.aborting = False
        #: the task whose sleeping wait went on with no wake-up (a "deadlock" outcome)
        self.lost: Task | None = None
        self.spin_detect = True
        #: object key -> writes executed on it since a spin-wait first read it (only such
        #: reads compare counts, and only with later counts of the same object)
        self.wcount: dict[int, int] = {}
        self.hub: Any = None
        self.pool: list[Any] = []
        #: the world the tasks run in (this runtime and a lockdep state), set by ``run``
        self.world: _rt.World | None = None
        self.last: Task | None = None  # chose last, not yet reported to the strategy
        self.last_op: Pending | None = None

    # ------------------------------------------------------------------ runtime contract
    def key(self, owner: object) -> int:
        """A small id per owner, in creation order, so keys agree between re-executions."""
        k = self.keys.get(id(owner))
        if k is None:
            k = self.keys[id(owner)] = len(self._owners)
            self._owners.append(owner)
        return k

    # (key() inlined in the three below: a model builds hundreds of primitives per execution,
    # and an atomic's every operation asks)
    def lock_cell(self, owner: object, label: str) -> SimCell:
        k = self.keys.get(id(owner))
        if k is None:
            k = self.keys[id(owner)] = len(self._owners)
            self._owners.append(owner)
        c = SimCell(self, k, label or _label_of(owner))
        self.cells.append(c)
        return c

    def waitq(self, owner: object) -> SimWaitQueue:
        k = self.keys.get(id(owner))
        if k is None:
            k = self.keys[id(owner)] = len(self._owners)
            self._owners.append(owner)
        name = getattr(owner, "name", None)  # (_label_of, inlined)
        return SimWaitQueue(self, k, name if isinstance(name, str) and name
                            else type(owner).__name__, owner)

    def current_task(self) -> Any:
        return self.current

    def point(self, owner: object, kind: str, write: bool = True) -> None:
        t = self.current
        k = self.keys.get(id(owner))
        if k is None:
            k = self.keys[id(owner)] = len(self._owners)
            self._owners.append(owner)
        name = getattr(owner, "name", None)
        key = (t.tid, k, write, kind, name if isinstance(name, str) and name
               else type(owner).__name__, ACQ_NONE, False, -1)
        self.stop(t, _made.get(key) or _record(key), None, None)

    def spawn(self, fn: Callable[..., Any], args: tuple = (), name: str | None = None) -> SimHandle:
        if not callable(fn):
            raise TypeError(f"spawn: {fn!r} is not callable")
        parent = self.current
        tid = len(self.tasks)
        tname = name or getattr(fn, "__name__", None) or f"task{tid}"
        key = (parent.tid, None, False, "spawn", tname, ACQ_NONE, False, -1)  # (visible's)
        self.stop(parent, _made.get(key) or _record(key), None, None)
        t = self._new_task(fn, tuple(args), tname, parent)
        # Run the child up to its first visible operation, then come back here.
        self.current = t
        t.g.switch(self, t)
        return SimHandle(t, self)

    def inject(self, fn: Callable[..., Any], args: tuple, victim: Task | None, name: str | None,
               soft: bool = False) -> SimHandle:
        """An interrupt on ``victim``'s CPU: a task whose first operation, "irq", is enabled
        only while that CPU may be interrupted (its task's interrupts are on and no handler
        runs there, or the task has ended), so *when* it fires is a scheduling choice like any
        other. Once it fires the victim stops until ``fn(*args)`` returns, in hard-IRQ (or
        soft-IRQ) context."""
        if not callable(fn):
            raise TypeError(f"inject: {fn!r} is not callable")
        parent = self.current
        victim = victim or parent
        tname = name or f"irq {getattr(fn, '__name__', 'handler')}"
        self.visible(parent, None, "spawn", False, None, tname, ACQ_NONE, None)
        t = self._new_task(_irq_main, (self, fn, tuple(args), victim, soft), tname, parent)
        t.victim = victim
        self.current = t
        t.g.switch(self, t)
        return SimHandle(t, self)

    # ------------------------------------------------------------------ scheduling
    def _new_task(self, fn: Callable[..., Any], args: tuple, name: str,
                  parent: Task | None) -> Task:
        t = Task(len(self.tasks), name, fn, args, parent)
        pool = self.pool
        if pool:
            g = pool.pop()
            if g.parent is not self.hub:
                g.parent = self.hub
        else:
            g = greenlet(_worker_main, parent=self.hub)
            g.switch(getcurrent())  # parks at once, waiting for its first task
        t.g = g
        self.tasks.append(t)
        self.live.append(t)
        return t

    def visible(self, t: Task, obj: int | None, kind: str, write: bool,
                pred: Callable[[], bool] | None, label: str, acq: int, wq: Any) -> None:
        """Stop ``t`` at a visible operation; return when the scheduler lets it execute.

        ``wq`` is what the operation waits on, for describing a deadlock (a join's is the
        task joined)."""
        key = (t.tid, obj, write, kind, label, acq, pred is not None,
               wq.tid if kind == "join" and wq is not None else -1)
        self.stop(t, _made.get(key) or _record(key), pred, wq)

    def stop(self, t: Task, op: Pending, pred: Callable[[], bool] | None, wq: Any) -> None:
        """:meth:`visible` with the operation's record made (primitives keep theirs)."""
        if self.aborting:
            raise GreenletExit
        t.op = op
        t.p_pred = pred
        t.p_wq = wq
        if self.tracing:  # (an asyncio task's wait says where its coroutine stopped)
            w = getattr(wq, "where_now", None)
            t.p_where = w() if w is not None else where_of(sys._getframe(1))
        obj = op[1]
        write = op[2]
        point = None
        if not write and obj is not None and self.spin_detect:
            snap = None
            point = (op[3], _point(sys._getframe(1)))
            seen = t.spin.get(obj if type(obj) is not tuple else obj[0][0])
            if seen is not None and seen[1] == point and self._unchanged(t.spin):
                # Back at the same read with nothing it read changed since. A spin-wait
                # iteration that cannot make progress only if the task's own state came back
                # too: its frames' locals as at the previous such re-read (a bounded loop's
                # counter moves on; it must not be parked, or what it does next is never
                # ordered before the others). A spinner yields: it runs again only when
                # something it read changes, or when nothing else can run.
                snap = _frames_state(sys._getframe(1))
                if seen[2] is not None and _same_state(seen[2], snap):
                    t.spin_counts = [(k, v[0]) for k, v in t.spin.items()]
                    t.spinning = True
        if t.starting:
            t.starting = False
            p = t.parent
            self.current = p
            p.g.switch()  # type: ignore[union-attr]
        else:
            n = self.nsteps
            if n < self.quick:
                # A step of the plan's prefix with nothing to tell the strategy and no trace
                # to draw (most steps are such). When it is this task's again, and the task
                # can go on (its condition holds, it is no parked spinner), it goes on at
                # once: no task is switched away, so there is no preemption to count, and
                # the replay path would find just that. Any other step takes that path.
                want = self.prefix[n]
                if want == t.tid and (pred is None or pred()) and not t.spinning:
                    self.nsteps = n + 1
                    self.choices.append(want)
                else:
                    nxt = self._replayed(t, want)
                    if nxt is not t:
                        self.current = nxt
                        nxt.g.switch()
            else:
                nxt = (self._replayed(t, self.prefix[n]) if n < self.nprefix and self.last is None
                       else self._pick(t))
                if nxt is not t:
                    self.current = nxt
                    nxt.g.switch()
        # the operation executes now
        if point is not None:  # a read of an object, watched for spinning
            wc = self.wcount
            if type(obj) is tuple:
                for k, _w in obj:  # type: ignore[union-attr]
                    t.spin[k] = (wc.setdefault(k, 0), point, snap)
            else:
                t.spin[obj] = (wc.setdefault(obj, 0), point, snap)  # type: ignore[index]
            t.spinning = False
        elif write and obj is not None:
            wc = self.wcount
            if wc:  # (empty until some task reads with spin detection on)
                if obj in wc:
                    wc[obj] += 1
                elif type(obj) is tuple:  # compound: each key it writes
                    for k, w in obj:
                        if w and k in wc:
                            wc[k] += 1
            if t.spin:
                t.spin.clear()

    def _unchanged(self, seen: dict[int, tuple[int, Any, Any]]) -> bool:
        wc = self.wcount
        return all(wc.get(k, 0) == v[0] for k, v in seen.items())

    def _stuck(self, t: Task) -> bool:
        """A spinner none of whose reads has changed: it runs only when nothing else can."""
        wc = self.wcount
        return all(wc.get(k, 0) == c for k, c in t.spin_counts)

    # The one replay path. A step of the plan's prefix is checked cheaply when it can be
    # (the task named can run, and is no parked spinner: then it is among the runnable tasks
    # whatever the others' state), and otherwise against the whole runnable set, as a step
    # the strategy chooses would be; either way preemptions count the same, so a prefix
    # replays exactly what the execution that recorded it did.
    def _replayed(self, cur: Task, want: int) -> Task:
        """Step ``nsteps`` of the plan's prefix, task ``want``'s."""
        n = self.nsteps
        tasks = self.tasks
        try:
            nxt = tasks[want]
        except IndexError:
            nxt = None
        if (nxt is not None and not nxt.done and not nxt.starting
                and ((p := nxt.p_pred) is None or p())
                and not (nxt.spinning and self._stuck(nxt))):
            # it can run and is no parked spinner: it is among the runnable tasks whatever
            # the others' state, so only ``cur`` need be looked at, to count a preemption
            if nxt is not cur and not cur.done:
                p = cur.p_pred
                if (p is None or p()) and not (cur.spinning and self._stuck(cur)):
                    self.preempt_steps.append(n)
        else:
            enabled = self._runnable()[0]
            cur_on = cur.op in enabled
            want = self._unfit(n, want, cur, cur_on, enabled)
            nxt = tasks[want]
            if nxt is not cur and cur_on:
                self.preempt_steps.append(n)
        self.nsteps = n + 1
        self.choices.append(want)
        if self.tracing:
            op = nxt.op
            self.trace.append((want, op.kind, op.label, nxt.p_where))  # type: ignore[union-attr]
        if n >= self.report_from:
            self.last = nxt
            self.last_op = nxt.op
        return nxt

    def _unfit(self, n: int, want: int, cur: Task, cur_on: bool,
               enabled: tuple[Pending, ...]) -> int:
        """A prefix step whose task is not plainly runnable: it may still be (a parked spinner
        when all spin); if not, a candidate schedule takes the default choice instead, and any
        other prefix is an error."""
        for op in enabled:
            if op.tid == want:
                return want
        if self.check == LENIENT:
            return cur.tid if cur_on else enabled[0].tid
        if self.check == STRICT:
            msg = (f"schedule step {n}: task {want} cannot run here (runnable tasks: "
                   f"{', '.join(str(op.tid) for op in enabled)}); the schedule does not "
                   f"belong to this body, or the body is not deterministic")
        else:
            msg = (f"explore: step {n} of a replayed prefix names task {want}, which cannot "
                   f"run (the body is not deterministic)")
        self.exc = ReplayMismatch(msg)
        self._abort("error")
        raise AssertionError  # not reached

    def _pick(self, cur: Task) -> Task:
        n = self.nsteps
        t = self.last
        if t is not None:  # _report, inlined: this runs at every step
            op = self.last_op
            self.last = None
            fl = op[5]  # type: ignore[index]
            self.tell(n - 1, op, fl == ACQ_LOCK or (fl == ACQ_TRY and t.try_ok),  # type: ignore
                      len(self.tasks) - 1 if op[3] == "spawn" else -1)  # type: ignore[index]
        if n < self.nprefix:
            return self._replayed(cur, self.prefix[n])
        enabled, blocked = self._runnable()
        if n >= self.max_steps:
            self._abort("hang")
        current = cur.op  # (of a task that ended: its last, which is not in ``enabled``)
        try:
            tid = self.choose(n, current, enabled, blocked)
        except ReplayMismatch as e:
            self.exc = e
            self._abort("error")
        try:
            nxt = self.tasks[tid]
        except (IndexError, TypeError):
            nxt = None
        if nxt is cur:
            if current not in enabled:
                self._unchosen(n, tid, enabled)
        else:
            if nxt is None or nxt.op not in enabled:
                self._unchosen(n, tid, enabled)
            if current in enabled:
                self.preempt_steps.append(n)
        self.nsteps = n + 1
        self.choices.append(nxt.tid)
        if self.tracing:
            op = nxt.op
            self.trace.append((nxt.tid, op.kind, op.label, nxt.p_where))  # type: ignore[union-attr]
        if n >= self.report_from:
            self.last = nxt
            self.last_op = nxt.op
        return nxt

    def _unchosen(self, n: int, tid: Any, enabled: tuple[Pending, ...]) -> None:
        """A strategy's answer that is no task that can run: it gave up (None), or erred."""
        if tid is None:
            self._abort("pruned")
        self.exc = ValueError(f"explore: strategy {getattr(self.strategy, 'name', '?')} chose "
                              f"task {tid!r} at step {n}, which cannot run there (runnable "
                              f"tasks: {', '.join(str(o.tid) for o in enabled)})")
        self._abort("error")

    def _runnable(self) -> tuple[tuple[Pending, ...], tuple[Pending, ...]]:
        """The pending operations that can execute now, and the others'. A spinner whose
        reads all came back unchanged runs only when nothing else can; no task at all that
        can run is a deadlock."""
        enabled = []
        blocked: list[Pending] | tuple[Pending, ...] = []
        spinners = None
        for t in self.live:
            p = t.p_pred
            if p is not None and not p():
                blocked.append(t.op)  # type: ignore[union-attr,arg-type]
                continue
            if t.spinning and self._stuck(t):  # (the condition just evaluated may set it)
                if spinners is None:
                    spinners = [t.op]
                else:
                    spinners.append(t.op)
                continue
            enabled.append(t.op)
        if not enabled:
            if spinners is None:
                self._abort("deadlock")
            return tuple(spinners), tuple(blocked)  # type: ignore[arg-type]
        if spinners is not None:
            blocked += spinners  # type: ignore[operator]
        return tuple(enabled), tuple(blocked) if blocked else ()  # type: ignore[arg-type]

    def _report(self) -> None:
        t = self.last
        op = self.last_op
        self.last = None
        fl = op[5]  # (op.flavour, op.kind: indexing is cheaper, and this runs at every step)
        self.tell(self.nsteps - 1, op, fl == ACQ_LOCK or (fl == ACQ_TRY and t.try_ok),  # type: ignore
                  len(self.tasks) - 1 if op[3] == "spawn" else -1)

    def finish(self) -> Finished:
        """The execution is over: tell the strategy its last step and how it ended."""
        if self.last is not None:
            self._report()
        run = _new(Finished, (self.outcome, tuple(self.choices), tuple(
            [t.op for t in self.live if t.op is not None and not t.starting])))
        self.strategy.end(run)
        return run

    def _abort(self, outcome: str) -> None:
        self.outcome = outcome
        self.hub.switch(_ABORT)
        raise GreenletExit  # not reached: the hub throws GreenletExit into this task

    def _task_main(self, t: Task) -> tuple[Any, Any]:
        """Run task ``t``; returns the greenlet to resume next and the value to give it."""
        t.active = True
        try:
            t.fn(*t.args)
            for hook in _rt.task_exit_hooks:
                hook()
        except GreenletExit:
            t.active = False
            return self.hub, None
        except (KeyboardInterrupt, SystemExit) as exc:  # the user stops the exploration
            self.exc = exc
            self.outcome = "interrupt"
            t.active = False
            return self.hub, _ABORT
        except BaseException as exc:  # the execution's failure
            self.exc = exc
            self.failed_task = t
            self.exc_where = _exc_where(exc)
            self.outcome = "exception"
            t.active = False
            return self.hub, _ABORT
        t.done = True
        self.live.remove(t)
        if t.starting:  # ended before its first visible operation: back to the spawner
            t.starting = False
            t.active = False
            self.current = t.parent
            return t.parent.g, None  # type: ignore[union-attr]
        if not self.live:
            t.active = False
            return self.hub, None
        try:
            nxt = self._pick(t)
        except GreenletExit:
            t.active = False
            return self.hub, None
        self.current = nxt
        t.active = False
        return nxt.g, None

    # ------------------------------------------------------------------ one execution
    def run(self, body: Callable[[], Any], world: _rt.World) -> None:
        """Execute ``body`` as task 0 to its end or to the first failure, in ``world`` (whose
        runtime is this one; the caller has entered it too).

        After a failure the other tasks stay parked, so their state can be described; the
        caller then unwinds them with :meth:`kill`.
        """
        self.world = world
        self.hub = getcurrent()
        self.pool = _pool()
        t0 = self._new_task(body, (), "main", None)
        self.current = t0
        t0.g.switch(self, t0)

    def detach(self) -> None:
        """The execution is over and described: let go of everything the body built (its
        primitives' owners and cells, the tasks' functions, conditions, waits and lockdep
        stacks, the world), so that it is garbage now and the collector frees it in one pass
        (see gcpace.py). What the execution is read for afterwards stays: the schedule, the
        outcome and its exception, the tasks' names and pending operations, the trace."""
        self._owners = []
        self.keys = {}
        self.cells = []
        self.world = None
        # nor the strategy: a failure kept for its report would keep the whole exploration's
        # search state alive with it (through its exception's frames, in a cycle)
        self.strategy = self.choose = self.tell = None
        for t in self.tasks:
            t.fn = t.args = t.p_pred = t.p_wq = t.lockdep = t.g = None

    def kill(self) -> None:
        """Unwind every unfinished task so its ``finally`` blocks do not linger."""
        if not any(t.active for t in self.tasks):
            return
        self.aborting = True
        for t in self.tasks:
            if t.active:
                self.current = t
                try:
                    t.g.throw(GreenletExit)
                except BaseException:  # noqa: BLE001 - a dying task's noise is not a finding
                    pass
        self.current = None


def _interrupted() -> bool:
    """The pending-operation condition of a task whose CPU runs an interrupt handler."""
    return False


def _irq_main(rt: SimRuntime, fn: Callable[..., Any], args: tuple, victim: Task,
              soft: bool) -> None:
    """The body of an injected interrupt (see :meth:`SimRuntime.inject`)."""
    from kvmlock import irq

    me = rt.current
    off = irq.SOFTIRQS_OFF | irq.HARDIRQS_OFF if soft else irq.HARDIRQS_OFF

    def can_fire() -> bool:
        return victim.done or (victim.irq_by is None and not victim.starting
                               and not victim.irq & off)

    rt.visible(me, None, "irq", True, can_fire, "<Interrupt>", ACQ_NONE, None)
    interrupts = not victim.done
    if interrupts:
        victim.irq_by = me
        saved, victim.p_pred = victim.p_pred, _interrupted
    try:
        with irq.softirq() if soft else irq.hardirq():
            fn(*args)
    finally:
        if interrupts:
            victim.irq_by = None
            victim.p_pred = saved


#: Idle task greenlets of each OS thread (a greenlet can only run in the thread it was made in).
_POOLS = threading.local()
_POOL_MAX = 256


def _pool() -> list[Any]:
    pool = getattr(_POOLS, "pool", None)
    if pool is None:
        pool = _POOLS.pool = []
    return pool


def _worker_main(creator: Any) -> Any:
    """A pooled greenlet: runs one task, parks in the pool, runs the next one it is given.

    Tasks arrive by ``switch(rt, task)``, never as the greenlet's start arguments: those stay
    referenced for the greenlet's whole life, and would keep a finished execution alive.
    """
    me = getcurrent()
    rt, t = creator.switch()
    creator = None
    while True:
        # Each task starts in a context of its own, as a new thread does: the context
        # variables an earlier task set on this greenlet stay with that task.
        me.gr_context = Context()
        _rt.enter(rt.world)
        pool = rt.pool
        target, value = rt._task_main(t)
        rt = t = None  # type: ignore[assignment]  # keep nothing of a finished execution alive
        me.gr_context = None  # nor its world and variables, through this greenlet's context
        if len(pool) >= _POOL_MAX:
            me.parent = target  # retire: a finished greenlet resumes its parent
            return value
        pool.append(me)
        rt, t = target.switch(value)


#: file name -> whether it is one of kvmlock's own layers. Keyed by the file name, not the
#: code object: a str caches its hash, while hashing a code object hashes its constants (and
#: the code objects among them) again on every lookup, several times a read's cost.
_FILE_INTERNAL: dict[str, bool] = {}


def _user_frames(frame: Any) -> Iterator[Any]:
    """The frames outside kvmlock's own layers, innermost first."""
    f = frame
    cache = _FILE_INTERNAL
    while f is not None:
        fn = f.f_code.co_filename
        internal = cache.get(fn)
        if internal is None:
            internal = cache[fn] = fn.startswith(_INTERNAL)
        if not internal:
            yield f
        f = f.f_back


def _point(frame: Any) -> Any:
    """The user's program point (code object, instruction offset: the call that led to this
    operation) -- every read asks, so a plain loop, not the generator, and no line number,
    which CPython finds by walking the code's line table from its start."""
    f = frame
    cache = _FILE_INTERNAL
    while f is not None:
        code = f.f_code
        fn = code.co_filename
        internal = cache.get(fn)
        if internal is None:
            internal = cache[fn] = fn.startswith(_INTERNAL)
        if not internal:
            return (code, f.f_lasti)
        f = f.f_back
    return None


_SCALARS = (int, float, str, bytes, bool, type(None))


def _frames_state(frame: Any) -> list[tuple[Any, int, tuple, tuple]]:
    """What a task's user frames hold at a read: code, line, local names and values (the
    values kept, so an identity cannot be reused by a new object while compared)."""
    out = []
    for f in _user_frames(frame):
        loc = f.f_locals
        out.append((f.f_code, f.f_lineno, tuple(loc), tuple(loc.values())))
    return out


def _same_state(a: list, b: list) -> bool:
    """The same frames at the same lines, each local the same object (or an equal number or
    string: arithmetic makes new ones)."""
    if len(a) != len(b):
        return False
    for (ca, la, ka, va), (cb, lb, kb, vb) in zip(a, b, strict=True):
        if ca is not cb or la != lb or ka != kb:
            return False
        for x, y in zip(va, vb, strict=True):
            if x is not y and not (type(x) is type(y) and type(x) in _SCALARS and x == y):
                return False
    return True


def _exc_where(exc: BaseException) -> tuple[str, str]:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if not fn.startswith(_INTERNAL):
            last = tb
        tb = tb.tb_next
    if last is None:
        return "", ""
    import linecache

    fn = last.tb_frame.f_code.co_filename
    line = last.tb_lineno
    return f"{os.path.basename(fn)}:{line}", linecache.getline(fn, line).strip()
