"""asyncio programs under the explorer: a deterministic event loop whose tasks are explored tasks.

``explore.check(coro_fn)`` (or ``check_async``) runs ``coro_fn()`` on an :class:`ExploredLoop`
once per execution. Every asyncio task of that loop is one explored task (one column of the
trace table): the body's own task runs the main coroutine, and ``create_task`` (so ``gather``,
``TaskGroup``, ``ensure_future`` too) starts one more. A task's *step* -- its coroutine running
from one suspension to the next, which asyncio never interleaves with anything -- is one
visible operation: the task stops before each step, and the strategy chooses which ready task
steps next. The choices are therefore exactly "which ready task runs next", and a task gives
the others their chance wherever it really suspends (an ``await`` of a lock, event, condition,
semaphore or queue that must wait, ``asyncio.sleep``, awaiting another task).

What a task waits for names its operation in the trace: ``lock`` (asyncio.Lock), ``acquire``
(Semaphore), ``wait`` (Event, Condition), ``get``/``put`` (Queue), ``sleep``, ``yield``
(``sleep(0)``), ``await`` (another task or future). A wait is disabled until the loop has
woken the task, so a task blocked on a lock that is never released, or two tasks taking two
locks in opposite orders, end the execution as a deadlock that says who waits for what.

A step runs plain Python code the explorer does not see, and asyncio's whole point is that it
may touch any shared data without a lock. So every step is treated as writing one object, the
loop: partial-order reduction considers any two steps of different tasks dependent, and DPOR
explores every order of the tasks' steps (as many executions as DFS). Callbacks that belong to
no task (future callbacks, ``call_soon`` of a plain function, fired timers) run in order at the
end of the step that made them ready. Time is virtual: it moves to the next timer only when no
task is ready, so ``sleep(0.1)`` ends before ``sleep(0.2)`` and a ``wait_for`` times out only
when nothing else can happen first.

Real I/O is not explored: sockets, pipes, subprocesses, signal handlers and executors (threads
the explorer does not run) are refused with an error naming the call. Blocking calls made
directly (a real socket's ``recv``) are caught by the explorer's guard as "blocked".
asyncio.Lock, Condition and binary Semaphores made inside an execution are lockdep's checked
ones (:mod:`kvmlock.lockdep.asyncio_instr`), so orders between them are validated with the same
classes ``kvmlock lockdep`` gives them, per explored task.
"""

from __future__ import annotations

import asyncio
import asyncio.events as _events
import asyncio.locks
import heapq
import inspect
import os
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from greenlet import GreenletExit

from kvmlock import runtime as _runtime
from kvmlock.explore.runtime import ACQ_NONE, ACQ_WAIT, SimRuntime, Task, _same_state
from kvmlock.lockdep import asyncio_instr as _ainstr
from kvmlock.lockdep.where import _internal

_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep

#: What a future made inside asyncio means to the task that awaits it: (function that made it
#: -> operation name). Anything else is an ``await``.
_KINDS = {
    ("locks.py", "acquire"): "lock",
    ("locks.py", "wait"): "wait",
    ("queues.py", "get"): "get",
    ("queues.py", "put"): "put",
    ("tasks.py", "sleep"): "sleep",
}


class Uncontrolled(RuntimeError):
    """An asyncio operation that would wait on something outside the exploration."""


def _refuse(op: str) -> Callable[..., Any]:
    def refuse(self: ExploredLoop, *args: Any, **kwargs: Any) -> Any:
        raise Uncontrolled(
            f"loop.{op}() under the explorer: it waits on real I/O or a real thread, which no "
            f"explored schedule controls (explore the program's own tasks; give the test a fake "
            f"for the I/O)")

    refuse.__name__ = op
    return refuse


class _Driver:
    """What one explored task knows of its asyncio task: where its coroutine stopped, and
    what it waits for there (with who holds the lock, for a deadlock's description)."""

    __slots__ = ("atask", "waiting_on")

    def __init__(self, atask: asyncio.Task) -> None:
        self.atask = atask
        self.waiting_on = ""

    def where_now(self) -> tuple[str, str]:
        """The user's line the task's coroutine is suspended at (for the trace table)."""
        return _coro_where(self.atask.get_coro())


def _coro_where(coro: Any) -> tuple[str, str]:
    import linecache

    found = None
    c = coro
    while c is not None:
        f = getattr(c, "cr_frame", None) or getattr(c, "gi_frame", None)
        if f is not None and not _internal(f.f_code.co_filename) and \
                not f.f_code.co_filename.startswith(_ASYNCIO_DIR):
            found = f
        c = getattr(c, "cr_await", None) or getattr(c, "gi_yieldfrom", None)
    if found is None:
        return "", ""
    fn = found.f_code.co_filename
    line = found.f_lineno
    return f"{os.path.basename(fn)}:{line}", linecache.getline(fn, line).strip()


def _coro_state(coro: Any) -> list[tuple[Any, int, tuple, tuple]]:
    """The user frames of a suspended coroutine chain: code, line, local names and values."""
    out = []
    c = coro
    while c is not None:
        f = getattr(c, "cr_frame", None) or getattr(c, "gi_frame", None)
        if f is not None and not _internal(f.f_code.co_filename):
            loc = f.f_locals
            out.append((f.f_code, f.f_lineno, tuple(loc), tuple(loc.values())))
        c = getattr(c, "cr_await", None) or getattr(c, "gi_yieldfrom", None)
    return out


class ExploredLoop(asyncio.BaseEventLoop):
    """An event loop with no I/O and a virtual clock whose task order the explorer chooses."""

    def __init__(self, rt: SimRuntime) -> None:
        super().__init__()
        self._rt = rt
        self._clock = 0.0
        self._key = rt.key(self)
        self._plain: deque[asyncio.Handle] = deque()
        self._queues: dict[asyncio.Task, deque[asyncio.Handle]] = {}
        self._tasks: list[asyncio.Task] = []
        self._explored: dict[asyncio.Task, Task] = {}
        self._origins: dict[int, tuple[str, Any, asyncio.Future]] = {}
        self._busy = False  # a task's step is running: no other task may step
        self._nstep = 0  # steps taken so far
        # asyncio task -> (its coroutine's state when its last step ended, the step's number,
        # whether that step was a poll that changed nothing)
        self._spin: dict[asyncio.Task, tuple[list, int, bool]] = {}
        self._adopt = False
        self._names = 0
        self._thread_id = -1  # "running": asyncio's own run_* must refuse

    # -------------------------------------------------------------- the loop's clock and queues
    def time(self) -> float:
        return self._clock

    def _call_soon(self, callback: Any, args: Any, context: Any) -> asyncio.Handle:
        h = asyncio.Handle(callback, args, self, context)
        self._route(h)
        return h

    def _route(self, h: asyncio.Handle) -> None:
        owner = getattr(h._callback, "__self__", None)  # type: ignore[attr-defined]
        q = self._queues.get(owner) if isinstance(owner, asyncio.Task) else None
        if q is None:
            self._plain.append(h)
        else:
            q.append(h)

    def _write_to_self(self) -> None:
        return None

    def _process_events(self, event_list: Any) -> None:
        return None

    def create_future(self) -> asyncio.Future:
        fut = super().create_future()
        f = sys._getframe(1)
        fn = f.f_code.co_filename
        if fn.startswith(_ASYNCIO_DIR):
            kind = _KINDS.get((os.path.basename(fn), f.f_code.co_name))
            if kind is not None:
                loc = f.f_locals
                what = loc.get("delay") if kind == "sleep" else loc.get("self")
                self._origins[id(fut)] = (kind, what, fut)
        return fut

    def create_task(self, coro: Any, *, name: Any = None, context: Any = None) -> asyncio.Task:
        self._check_closed()
        self._names += 1
        if name is None:  # numbered per execution, so names agree between runs
            name = f"Task-{self._names}"
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        if task._source_traceback:  # type: ignore[attr-defined]
            del task._source_traceback[-1]  # type: ignore[attr-defined]
        # its first step was scheduled before the task had a queue: move it there
        q: deque[asyncio.Handle] = deque()
        for h in [h for h in self._plain if getattr(h._callback, "__self__", None) is task]:  # type: ignore[attr-defined]
            self._plain.remove(h)
            q.append(h)
        self._queues[task] = q
        self._tasks.append(task)
        rt = self._rt
        label = name if not name.startswith("Task-") else getattr(coro, "__name__", name)
        if self._adopt:
            self._adopt = False
            me = rt.current
            self._bind(task, me)
        else:
            h = rt.spawn(self._drive, (task,), label)
            self._bind(task, h.task)
        return task

    def _bind(self, atask: asyncio.Task, t: Task) -> None:
        self._explored[atask] = t
        st = _ExploredState(atask, t)
        _ainstr._STATES[atask] = st
        atask.add_done_callback(_ainstr._task_done)
        st.watched = True

    # -------------------------------------------------------------- running
    def _can_step(self, atask: asyncio.Task, t: Task, q: deque[asyncio.Handle]) -> bool:
        while q and q[0]._cancelled:  # type: ignore[attr-defined]
            q.popleft()
        if not q or self._busy:
            return False
        # a poll that changed nothing: the task spins, and the explorer lets it go on only
        # when no other task can (as a thread spinning on unchanged state)
        polled = self._spin.get(atask)
        t.spinning = polled is not None and polled[2] and polled[1] == self._nstep
        return True

    def _others_ready(self, atask: asyncio.Task | None) -> bool:
        """Whether a task other than ``atask`` can step, a polling one aside (or a timer
        could fire: time passes while a task polls)."""
        spin = self._spin
        for t, q in self._queues.items():
            if t is atask or not q:
                continue
            p = spin.get(t)
            if p is None or not p[2] or p[1] != self._nstep:
                return True
        return atask is not None and bool(self._scheduled)  # type: ignore[attr-defined]

    def _awaits(self, atask: asyncio.Task, first: bool) -> tuple[str, str, str]:
        """The operation a task stopped at: what it awaits, in the trace's words, and who
        holds it when it is a lock."""
        if first:
            return "start", "", ""
        fut = atask._fut_waiter  # type: ignore[attr-defined]
        if fut is None:
            return "yield", "", ""
        origin = self._origins.pop(id(fut), None)
        if origin is not None and origin[2] is fut:
            kind, what, _f = origin
            if kind == "sleep":
                return "sleep", f"{what:g}" if isinstance(what, (int, float)) else "", ""
            return kind, self._label(what), self._holder(what)
        if type(fut).__name__ == "_GatheringFuture":
            return "await", "gather", ""
        if isinstance(fut, asyncio.Task):
            t = self._explored.get(fut)
            return "await", f"{t.name} (task {t.tid})" if t is not None else fut.get_name(), ""
        return "await", type(fut).__name__, ""

    @staticmethod
    def _label(obj: Any) -> str:
        m = getattr(obj, "_ld", None)
        return m.name if m is not None else type(obj).__name__

    def _holder(self, obj: Any) -> str:
        owner = getattr(obj, "_ld_owner", None)  # a checked lock's holder's held stack
        if owner is not None:
            for t in self._explored.values():
                if t.lockdep is owner:
                    return f" (held by task {t.tid} {t.name})"
        return ""

    def _drive(self, atask: asyncio.Task) -> None:
        """The explored task of ``atask``: before each step, stop until the strategy picks it."""
        rt = self._rt
        me = rt.current
        q = self._queues[atask]
        box = _Driver(atask)

        def ready() -> bool:
            return self._can_step(atask, me, q)

        first = True
        spin = self._spin
        try:
            while True:
                kind, label, holder = self._awaits(atask, first)
                box.waiting_on = f"{kind} {label}{holder}"
                first = False
                # a wait (ACQ_WAIT): partial-order reduction tracks what enables it
                rt.visible(me, self._key, kind, True, ready, label, ACQ_WAIT, box)
                h = q.popleft()
                self._busy = True
                self._nstep += 1
                try:
                    h._run()  # type: ignore[attr-defined]
                    if rt.spin_detect:
                        self._polls(atask, me)
                    self._settle()
                finally:
                    self._busy = False
                if atask.done():
                    spin.pop(atask, None)
                    break
        except GreenletExit:
            # The execution ended with this task suspended (a failure, a deadlock): its
            # coroutine's ``finally`` blocks and lock exits run now, in this execution's world
            # and as this task. Left suspended, the coroutine would run them whenever the
            # collector finds it -- inside some later execution, whose lockdep state would
            # then see a release by a task it never had.
            atask.get_coro().close()
            raise
        del self._queues[atask]

    def _polls(self, atask: asyncio.Task, me: Task) -> None:
        """Whether the step just taken was a poll that changed nothing: the task yields
        (``sleep(0)``) again where it did at the end of its previous step, with the same local
        state, and no other task stepped in between. Such a task waits until another task
        steps (or nothing else can happen), as a spinning thread does; else a loop polling a
        flag would be explored forever on its own, and time could never pass."""
        spin = self._spin
        if atask.done() or atask._fut_waiter is not None:  # type: ignore[attr-defined]
            spin.pop(atask, None)
            me.spinning = False
            return
        state = _coro_state(atask.get_coro())
        prev = spin.get(atask)
        n = self._nstep
        polling = prev is not None and prev[1] == n - 1 and _same_state(prev[0], state)
        spin[atask] = (state, n, polling)

    def _settle(self) -> None:
        """Run the callbacks of no task that are ready, in order; when no task is ready
        either, time passes to the next timer."""
        plain = self._plain
        sched = self._scheduled  # type: ignore[attr-defined]
        while True:
            while plain:
                h = plain.popleft()
                if not h._cancelled:  # type: ignore[attr-defined]
                    h._run()  # type: ignore[attr-defined]
            if not sched or self._others_ready(None):
                return
            while sched and sched[0]._cancelled:
                heapq.heappop(sched)._scheduled = False
            if not sched:
                return
            self._clock = max(self._clock, sched[0]._when)
            while sched and sched[0]._when <= self._clock:
                h = heapq.heappop(sched)
                h._scheduled = False
                if not h._cancelled:
                    self._route(h)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """An exception in a callback fails the execution; what asyncio says about tasks and
        futures being collected (pending, never retrieved) is judged when the loop ends."""
        exc = context.get("exception")
        if self._rt.aborting or exc is None or isinstance(exc, GreenletExit):
            return
        if "handle" in context:
            raise exc

    def run_main(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` as the calling explored task's asyncio task, then end as asyncio.run
        does: cancel the tasks still pending and wait for them."""
        self._adopt = True
        main = self.create_task(coro)
        self._drive(main)
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            for t in pending:
                t.cancel()
            rest = [self._explored[t] for t in pending]
            rt = self._rt
            rt.visible(rt.current, None, "cancel", False, lambda: all(t.done for t in rest),
                       f"{len(rest)} pending task(s)", ACQ_NONE, None)
        result = main.result()
        for t in self._tasks:  # a task's exception nobody retrieved is a failure too
            if t.done() and not t.cancelled() and t._log_traceback:  # type: ignore[attr-defined]
                raise t.exception()  # type: ignore[misc]
        return result

    def run_forever(self) -> None:
        raise RuntimeError("This event loop is already running (the explorer runs it)")

    def run_until_complete(self, future: Any) -> Any:
        raise RuntimeError("This event loop is already running (the explorer runs it)")

    def close(self) -> None:
        self._thread_id = None
        super().close()

    def __del__(self, _warn: Any = None) -> None:  # noqa: D105 - no "unclosed loop" noise
        return None



for _op in ("run_in_executor", "getaddrinfo", "getnameinfo", "create_connection",
            "create_server", "create_datagram_endpoint", "create_unix_connection",
            "create_unix_server", "connect_read_pipe", "connect_write_pipe", "subprocess_exec",
            "subprocess_shell", "add_reader", "add_writer", "sock_recv", "sock_recv_into",
            "sock_recvfrom", "sock_recvfrom_into", "sock_sendall", "sock_sendto", "sock_connect",
            "sock_accept", "sock_sendfile", "sendfile", "start_tls", "add_signal_handler",
            "connect_accepted_socket"):
    setattr(ExploredLoop, _op, _refuse(_op))
del _op


class _ExploredState(_ainstr._TaskState):
    """lockdep's state of an asyncio task whose explored task holds its held-lock stack, so
    the explorer (deadlock reports, end-of-task checks) and lockdep see one stack."""

    __slots__ = ("_t",)

    def __init__(self, atask: asyncio.Task, t: Task) -> None:
        self._t = t
        super().__init__(atask)
        self.name = t.name
        self.rt = _ExploredView(self, t)

    @property  # type: ignore[override]
    def lockdep(self) -> Any:
        return self._t.lockdep

    @lockdep.setter
    def lockdep(self, value: Any) -> None:
        self._t.lockdep = value


class _ExploredView:
    """The explorer's runtime, seen from inside one asyncio task's lock operation."""

    __slots__ = ("current", "_base")
    name = "explore"

    def __init__(self, st: _ExploredState, t: Task) -> None:
        self.current = t
        self._base = _runtime.world().rt

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._base, attr)


# ------------------------------------------------------------------ the body and the checked locks
class AsyncBody:
    """An async function as an explorable body: each call runs it on a fresh explored loop."""

    def __init__(self, coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self.coro_fn = coro_fn
        fn = inspect.unwrap(getattr(coro_fn, "func", coro_fn))  # (a functools.partial's)
        self.__globals__ = getattr(fn, "__globals__", {})
        self.__name__ = getattr(fn, "__name__", "main")

    def __call__(self) -> Any:
        rt = _runtime.world().rt
        if not isinstance(rt, SimRuntime):
            raise RuntimeError("an async body runs under explore.check, not on its own")
        coro = self.coro_fn()
        if not inspect.iscoroutine(coro):
            raise TypeError(f"{self.__name__}() must return a coroutine, got {coro!r}")
        return run_explored(rt, coro)

    def __repr__(self) -> str:
        return f"<async body {self.__name__}>"


def run_explored(rt: SimRuntime, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh explored loop in the calling explored task, as ``asyncio.run``
    would on a real one."""
    loop = ExploredLoop(rt)
    prev = _events._get_running_loop()
    _events._set_running_loop(loop)
    done = False
    try:
        result = loop.run_main(coro)
        done = True
        return result
    finally:
        _events._set_running_loop(prev)
        if done:
            loop.close()


def _make_run(prev: Callable[..., Any]) -> Callable[..., Any]:
    def run(main: Any, *, debug: bool | None = None) -> Any:
        """``asyncio.run`` inside an exploration (a plain test that runs its coroutine
        itself): on the explorer's loop, so its tasks are explored too."""
        rt = _runtime.world().rt
        if not isinstance(rt, SimRuntime) or not _explored_thread() or \
                _events._get_running_loop() is not None:
            return prev(main, debug=debug)
        if not inspect.iscoroutine(main):
            raise ValueError(f"a coroutine was expected, got {main!r}")
        return run_explored(rt, main)

    return run


def wrap(body: Any) -> Any:
    """``body`` as the explorer calls it: an async function becomes an :class:`AsyncBody`."""
    if inspect.iscoroutinefunction(body):
        return AsyncBody(body)
    return body


def _explored_thread() -> bool:
    from kvmlock.explore.pythreads import current_rt

    return current_rt() is not None


def _checked(prev: type, checked: type) -> type:
    """``asyncio.Lock``/``Semaphore`` while an exploration is installed: lockdep's checked
    class in an exploring thread, the previous one in any other."""

    class _Meta(type(prev)):  # type: ignore[misc]
        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            if _explored_thread():
                return checked(*args, **kwargs)
            return prev(*args, **kwargs)

        def __instancecheck__(cls, obj: object) -> bool:
            return isinstance(obj, prev)

        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, prev)

    return _Meta(prev.__name__, (), {"__doc__": prev.__doc__})


def targets() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """What an exploration replaces in asyncio (see :class:`pythreads.Substitution`)."""
    import asyncio.runners

    out: list[tuple[Any, str, Callable[[Any], Any]]] = [
        (asyncio, "run", _make_run), (asyncio.runners, "run", _make_run)]
    for name, checked in (("Lock", _ainstr.CheckedAsyncLock),
                          ("Semaphore", _ainstr.CheckedAsyncSemaphore)):
        for ns in (asyncio, asyncio.locks):
            out.append((ns, name, lambda prev, c=checked: _checked(prev, c)))
    return out


__all__ = ["AsyncBody", "ExploredLoop", "Uncontrolled", "targets", "wrap"]
