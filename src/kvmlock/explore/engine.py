"""Driving explorations: one execution at a time, failures classified, shrunk and explained."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from inspect import CO_COROUTINE
from types import FunctionType
from typing import Any

from kvmlock import lockdep as _lockdep
from kvmlock import runtime as _runtime
from kvmlock.explore import gcpace as _gcpace
from kvmlock.explore import guard as _guard
from kvmlock.explore import memtrace as _memtrace
from kvmlock.explore import parallel as _parallel
from kvmlock.explore import pythreads as _pythreads
from kvmlock.explore import schedule as _schedule
from kvmlock.explore import trace as _trace
from kvmlock.explore.progress import Progress
from kvmlock.explore.records import Pending
from kvmlock.explore.result import Failure, Result
from kvmlock.explore.runtime import SimCell, SimRuntime, SimWaitQueue, Task
from kvmlock.explore.strategies.base import Replay, Strategy
from kvmlock.explore.strategies.dfs import DFS
from kvmlock.explore.strategies.dpor import DPOR
from kvmlock.explore.strategies.sampling import PCT, RandomWalk

STRATEGIES = ("dfs", "dpor", "pct", "random")


class Execution:
    """What one execution left behind, captured before its parked tasks were unwound."""

    def __init__(self, rt: SimRuntime) -> None:
        self.rt = rt  # read while the execution is described, and by its trace table
        self.reports: list[Any] = []
        self.kind: str | None = None
        self.message = ""
        self.task = ""
        self.where = ""
        self.final: list[tuple[int, str]] = []

    @property
    def choices(self) -> list[int]:
        return self.rt.choices

    @property
    def preempt_steps(self) -> list[int]:
        return self.rt.preempt_steps

    @property
    def outcome(self) -> str | None:
        return self.rt.outcome

    @property
    def exc(self) -> BaseException | None:
        return self.rt.exc

    @property
    def steps(self) -> int:
        return self.rt.nsteps

    @property
    def irqs(self) -> bool:
        """An interrupt was injected (no dependency between operations expresses when)."""
        for t in self.rt.tasks:  # (a loop, not any() over a generator: asked every execution)
            if t.victim is not None:
                return True
        return False

    def signature(self) -> tuple:
        """What makes two failures "the same" for shrinking."""
        if self.kind in ("assertion", "exception"):
            return (self.kind, type(self.exc).__name__)
        if self.kind == "lockdep":
            return (self.kind, getattr(self.reports[0], "kind", ""))
        if self.kind == "deadlock":
            return (self.kind, self.rt.lost is None)
        return (self.kind,)


def _holds(t: Task, rt: SimRuntime) -> list[str]:
    """Locks ``t`` holds: lockdep's view (covers rwsems and SRCU) or else the lock cells."""
    saved = rt.current
    rt.current = t
    try:
        # (an asyncio task's own class, which lockdep holds for its whole life, is no lock)
        names = [f"{h.name} (read)" if h.read else h.name for h in _lockdep.held_locks()
                 if not h.name.startswith("task:")]
    except Exception:  # noqa: BLE001 - a description must not fail the report
        names = []
    finally:
        rt.current = saved
    if names and names[-1].removesuffix(" (read)") == _label(t) and not (
        isinstance(t.p_wq, SimCell) and t.p_wq.holder is t
    ):
        names.pop()  # lockdep records a lock before blocking on it: that one is awaited
    if not names:
        names = [c.label for c in rt.cells if c.holder is t]
    return names


def _kind(t: Task) -> str:
    return t.op.kind if t.op is not None else "start"


def _label(t: Task) -> str:
    return t.op.label if t.op is not None else ""


def _waiting_on(t: Task) -> str:
    wq = t.p_wq
    told = getattr(wq, "waiting_on", None)  # (an asyncio task says what it awaits itself)
    if told:
        return told
    if isinstance(wq, SimCell):
        h = wq.holder
        return f"{_kind(t)} {_label(t)}" + (f" (held by task {h.tid} {h.name})" if h else "")
    if isinstance(wq, SimWaitQueue):
        if t in wq.sleepers:
            return (f"{_kind(t)} {_label(t)} ({wq.owner!r}), and no wake-up came after it "
                    f"went to sleep")
        return f"{_kind(t)} {_label(t)} ({wq.owner!r})"
    if isinstance(wq, Task):
        return f"join {wq.name} (task {wq.tid}, still running)"
    return f"{_kind(t)} {_label(t)}"


#: how a report names a sleeper that no wake-up will reach
_LOST_WAKEUP = "a lost wake-up: a sleeper nobody will wake"


def _describe(ex: Execution, lockdep_on: bool, max_steps: int) -> None:
    rt = ex.rt
    out = rt.outcome
    if out == "exception":
        exc = rt.exc
        t = rt.failed_task
        ex.kind = "assertion" if isinstance(exc, AssertionError) else "exception"
        ex.task = t.name if t else ""
        ex.where = rt.exc_where[0]
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        src = f"\n    {rt.exc_where[1]}" if rt.exc_where[1] else ""
        ex.message = (f"{text}\n  in task {t.tid if t else '?'} ({ex.task}) at "
                      f"{ex.where or '?'}{src}")
        if t is not None:
            ex.final = [(t.tid, text)]
    elif out in ("deadlock", "hang"):
        lines = []
        spun = any(t.spinning for t in rt.live)
        for t in rt.live:
            held = _holds(t, rt)
            hs = f"; holds {', '.join(held)}" if held else ""
            if t.irq_by is not None:
                h = t.irq_by
                lines.append(f"  task {t.tid} ({t.name}) is interrupted by task {h.tid} "
                             f"({h.name}), which must return first{hs}")
                ex.final.append((t.tid, f"interrupted by {h.name}"))
                continue
            if t.spinning:
                what, note = "spins on", "spins: "
            elif isinstance(t.p_wq, SimWaitQueue) and t in t.p_wq.sleepers:
                what, note = "sleeps in", "asleep: "
            elif (out == "deadlock" and rt.lost is None) or spun:
                what, note = "waits for", "blocked: "
            else:
                what, note = "next", "next: "
            lines.append(f"  task {t.tid} ({t.name}) {what}: {_waiting_on(t)}{hs}")
            src = f"\n  {t.p_where[1]}  [{t.p_where[0]}]" if t.p_where[0] else ""
            ex.final.append((t.tid, note + f"{_kind(t)} {_label(t)}{src}"))
        ex.kind = out
        if rt.lost is not None:
            t = rt.lost
            ex.message = (f"task {t.tid} ({t.name}) went on from a sleeping wait that no "
                          f"wake-up came after: it sleeps for ever ({_LOST_WAKEUP}):\n"
                          + "\n".join(lines))
        elif out == "deadlock":
            asleep = any(isinstance(t.p_wq, SimWaitQueue) and t in t.p_wq.sleepers
                         for t in rt.live if not t.spinning)
            lost = f" ({_LOST_WAKEUP})" if asleep else ""
            ex.message = f"every live task is blocked{lost}:\n" + "\n".join(lines)
        elif spun:
            ex.message = (f"no end after max_steps={max_steps} visible operations: tasks "
                          f"spin re-reading state that nothing changes (livelock):\n"
                          + "\n".join(lines))
        else:
            ex.message = (f"no end after max_steps={max_steps} visible operations (livelock, "
                          f"endless spinning or an unbounded loop):\n" + "\n".join(lines))
    if ex.reports and lockdep_on:
        if ex.kind is None:
            ex.kind = "lockdep"
            r = ex.reports[0]
            ex.task = getattr(r, "task", "")
            ex.where = getattr(r, "where", "")
            ex.message = "\n".join(str(r) for r in ex.reports)
            names = [t.name for t in rt.tasks]
            if ex.task in names:
                ex.final = [(names.index(ex.task), f"lockdep: {getattr(r, 'kind', '')}")]
        else:
            ex.message += "\nlockdep also reported:\n" + "\n".join(str(r) for r in ex.reports)


def execute(body: Callable[[], Any], strategy: Strategy, max_steps: int,
            lockdep_on: bool = True, tracing: bool = False,
            spin: bool = True, memory: bool = False,
            memo: _lockdep.Memo | None = None,
            tracer: Callable[[SimRuntime], _memtrace.Tracer] | None = None) -> Execution | None:
    """Run one execution of ``body`` chosen by ``strategy``; None when it has no more.
    ``memo``: lockdep's chain memory of the exploration (one per exploration and process).
    ``tracer``: makes the execution's data-access tracer instead of ``memory=True``'s (the race
    audit's, which records accesses instead of scheduling at them)."""
    if _guard.stopping():  # (its stop was lost where it landed: see guard.stopping)
        raise _guard.Interrupted("stopped")
    plan = strategy.begin()
    if plan is None:
        return None
    rt = SimRuntime(strategy, plan, max_steps, tracing)
    rt.spin_detect = spin
    ex = Execution(rt)
    _gcpace.hold()
    try:
        world = _lockdep.new_world(rt, memo=memo)
        token = _runtime.enter(world)
        bound = _pythreads.Binding(rt, lockdep_on)
        made = None
        try:
            if tracer is not None:
                made = tracer(rt)
            elif memory:
                made = _memtrace.Tracer(rt)
            rt.run(body if made is None else made.task(body), world)
            ex.reports = list(world.lockdep.reports)
            _describe(ex, lockdep_on, max_steps)
        finally:
            # After a failure the parked tasks are unwound here; any other way out (an error
            # or Ctrl-C in the engine itself) must not leave tasks inside pooled greenlets.
            rt.kill()
            if made is not None:
                made.close()
            bound.close()
            _runtime.leave(token)
        if rt.outcome == "interrupt":
            raise rt.exc  # type: ignore[misc]
        rt.finish()
        if rt.outcome == "error":
            raise ValueError(str(rt.exc)) from None
        rt.detach()
        return ex
    finally:
        _gcpace.release()  # (after detach: the body's objects are garbage by now)


def _make(strategy: str, seed: int, preemption_bound: int | None, depth: int) -> Strategy:
    if strategy == "dfs":
        return DFS(preemption_bound)
    if strategy == "dpor":
        return DPOR(preemption_bound)
    if strategy == "pct":
        return PCT(seed, depth)
    if strategy == "random":
        return RandomWalk(seed)
    raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


def _check_int(name: str, v: object, lo: int, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}" + (" or None" if allow_none else "")
                         + f", got {v!r}")


def _check_seconds(name: str, v: object) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
        raise ValueError(f"{name} must be a positive number of seconds or None, got {v!r}")


def _async(body: Any) -> Any:
    """An async function runs on the explorer's event loop (see asyncio_loop.py)."""
    if type(body) is FunctionType and not body.__code__.co_flags & CO_COROUTINE:
        return body  # (a plain function, said without inspect's unwrapping: every check asks)
    if inspect.iscoroutinefunction(body):
        from kvmlock.explore.asyncio_loop import AsyncBody

        return AsyncBody(body)
    return body


def _check_body(body: object) -> None:
    if not callable(body):
        raise TypeError(f"the body to explore must be callable with no arguments, got {body!r}")
    if isinstance(_runtime.world().rt, SimRuntime):
        raise RuntimeError("explore.check/replay cannot be called inside an explored execution")


def _failure(body: Callable[[], Any], ex: Execution, max_steps: int, lockdep_on: bool,
             shrunk_from: tuple[int, int] | None = None, spin: bool = True,
             memory: bool = False) -> Failure:
    choices = list(ex.choices)
    names = [t.name for t in ex.rt.tasks]

    def render(setup: bool) -> str:
        with _pythreads.Substitution(body):  # the table is drawn later, on demand
            tr = execute(body, Replay(choices), max_steps, lockdep_on, tracing=True, spin=spin,
                         memory=memory)
        assert tr is not None
        title = f"{ex.kind}: schedule {_schedule.encode(choices)}"
        merge = {t.tid: t.victim.tid for t in tr.rt.tasks if t.victim is not None}
        return _trace.render([t.name for t in tr.rt.tasks] or names, tr.rt.trace, tr.final,
                             title, setup=setup, merge=merge)

    return Failure(
        kind=ex.kind or "", schedule=_schedule.encode(choices), message=ex.message,
        task=ex.task, where=ex.where, steps=len(choices), preemptions=len(ex.preempt_steps),
        lockdep_reports=list(ex.reports), exception=ex.exc, shrunk_from=shrunk_from,
        _render=render,
    )


def _shrink(body: Callable[[], Any], ex: Execution, max_steps: int, lockdep_on: bool,
            budget: int, spin: bool = True, memory: bool = False) -> Execution:
    sig = ex.signature()
    keep: dict[str, Execution] = {}

    def trial(cand: list[int]) -> tuple[bool, list[int], list[int]]:
        tex = execute(body, Replay(cand, strict=False), max_steps, lockdep_on, spin=spin,
                      memory=memory)
        assert tex is not None
        if tex.kind is None or tex.signature() != sig:
            return False, tex.choices, tex.preempt_steps
        keep[_schedule.encode(tex.choices)] = tex
        return True, tex.choices, tex.preempt_steps

    best, _pre, _used = _schedule.shrink(list(ex.choices), list(ex.preempt_steps), trial,
                                         budget)
    return keep.get(_schedule.encode(best), ex)


def check(
    body: Callable[[], Any],
    strategy: str | Strategy = "dpor",
    *,
    max_runs: int | None = None,
    max_steps: int = 10_000,
    timeout: float | None = None,
    seed: int = 0,
    preemption_bound: int | None = None,
    stop_on_first: bool = True,
    depth: int = 3,
    lockdep: bool = True,
    shrink: bool = True,
    shrink_budget: int = 200,
    progress: bool | None = None,
    spin_detection: bool = True,
    workers: int = 1,
    backend: str = "process",
    memory: bool = False,
    stall: float | None = 10.0,
) -> Result:
    """Run ``body`` under many schedules and report failures.

    ``body`` is called afresh for every execution and builds its own objects; its tasks are
    started with ``kvmlock.spawn`` and it checks invariants with plain ``assert``. Sampling
    strategies ("pct", "random") run ``max_runs`` executions (default 1000); exhaustive ones
    ("dfs", "dpor") run until the space is exhausted unless ``max_runs`` or ``timeout`` stops
    them first. ``lockdep=False`` ignores lockdep reports (they are still collected for
    kvmlock.sync primitives; plain ``threading`` locks are then not validated at all, and a
    deadlock names the locks each task holds all the same).
    ``spin_detection=False`` turns off the rule that makes a task re-reading unchanged state
    yield to the others (replay such failures with the same setting). ``memory=True`` makes
    every load and store of the program's own data (attributes, subscripts, globals, closure
    variables) a visible operation, for races on plain Python data; replay its failures with
    ``memory=True`` too. An execution that makes no visible operation for ``stall`` seconds
    (blocked in a call the explorer does not control, or looping over plain data) ends the
    check with a "blocked" or "hang" failure naming the place; ``timeout`` bounds the whole
    check, even when an execution never returns.


    ``strategy`` may also be a :class:`~kvmlock.explore.Strategy` object, made afresh for the
    check (see docs/explore.md, "Writing a strategy"); it runs until its ``begin`` has no next
    execution, ``max_runs`` (default 1000 unless it is ``exhaustive``) or ``timeout``.

    ``workers`` > 1 splits an exhaustive exploration ("dfs", "dpor") across that many worker
    processes by subtree; ``backend="ray"`` runs the workers as actors of the Ray cluster
    ``ray.init`` joined (a local instance when none is). The executions are the same
    Mazurkiewicz traces (dpor) or schedules (dfs) as the sequential run's, and each failure is
    replayed in this process before it is reported. A worker that dies raises
    ``explore.WorkerCrashed``.
    """
    _check_body(body)
    body = _async(body)
    custom = strategy if isinstance(strategy, Strategy) else None
    if custom is not None:
        strategy = custom.name
        if preemption_bound is not None:
            raise ValueError("preemption_bound is a setting of the built-in dfs and dpor; a "
                             "strategy object bounds its own search")
        if workers > 1 or backend != "process":
            raise ValueError("workers/backend split the built-in dfs and dpor explorations, "
                             "not a strategy object")
        if not custom.exhaustive and max_runs is None:
            max_runs = 1000
    elif not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)} "
                         f"or pass a kvmlock.explore.Strategy")
    _check_int("max_runs", max_runs, 1)
    _check_int("max_steps", max_steps, 1, allow_none=False)
    _check_int("preemption_bound", preemption_bound, 0)
    _check_int("seed", seed, 0, allow_none=False)
    _check_int("depth", depth, 1, allow_none=False)
    _check_int("shrink_budget", shrink_budget, 0, allow_none=False)
    _check_seconds("timeout", timeout)
    _check_seconds("stall", stall)
    if memory:
        _memtrace.selftest()
    if strategy in ("pct", "random") and max_runs is None:
        max_runs = 1000
    if strategy in ("pct", "random") and preemption_bound is not None:
        raise ValueError(f"preemption_bound applies to dfs and dpor, not {strategy!r}")

    _check_int("workers", workers, 1, allow_none=False)
    if backend not in _parallel.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of "
                         f"{', '.join(_parallel.BACKENDS)}")
    if workers > 1 or backend != "process":
        if strategy not in ("dfs", "dpor"):
            raise ValueError(f"workers/backend split an exhaustive exploration (dfs, dpor), "
                             f"not {strategy!r}")
        if strategy == "dpor" and preemption_bound is not None:
            raise ValueError("a parallel dpor exploration takes no preemption_bound "
                             "(use strategy='dfs' for a bounded parallel search)")
        return _check_parallel(body, strategy, workers, backend, max_runs=max_runs,
                               max_steps=max_steps, timeout=timeout, stop_on_first=stop_on_first,
                               lockdep=lockdep, shrink=shrink, shrink_budget=shrink_budget,
                               progress=progress, spin=spin_detection,
                               preemption_bound=preemption_bound, memory=memory, stall=stall)
    strat = custom or _make(strategy, seed, preemption_bound, depth)
    res = Result(strategy=strategy, preemption_bound=preemption_bound)
    prog = Progress(f"explore[{strategy}]", progress)
    seen: set[tuple] = set()
    memo = _lockdep.Memo()
    t0 = time.perf_counter()

    def explore_all() -> None:
        nonlocal res, strat
        while True:
            if max_runs is not None and res.runs >= max_runs:
                res.stopped = "max_runs"
                if strat.exhaustive and strat.begin() is None:
                    res.exhausted = True
                break
            if timeout is not None and time.perf_counter() - t0 > timeout:
                res.stopped = "timeout"
                break
            ex = execute(body, strat, max_steps, lockdep, spin=spin_detection, memory=memory,
                         memo=memo)
            if ex is not None and isinstance(strat, DPOR) and ex.irqs:
                # When an interrupt fires changes what every operation of the interrupted task
                # does next, which no (object, read/write) dependency expresses: explore the
                # body with exhaustive DFS instead, from the start.
                strat = DFS(preemption_bound)
                res = Result(strategy="dfs", preemption_bound=preemption_bound,
                             note="interrupts: dfs instead of dpor")
                seen.clear()
                continue
            if ex is None:  # the strategy has no next execution
                res.exhausted = strat.exhaustive  # (a sampling one's plan ran out: no proof)
                res.stopped = "exhausted" if strat.exhaustive else "done"
                break
            if ex.outcome == "pruned":
                res.pruned += 1
                continue
            if isinstance(ex.exc, _guard.Interrupted):
                raise ex.exc
            res.runs += 1
            res.steps += ex.steps
            prog.tick(res.runs, strat.distinct())
            if ex.kind is None:
                continue
            key = (ex.signature(), ex.where)
            if key in seen:
                # nothing reads this one's exception again; its traceback's frames name the
                # runtime, which names the exception: a cycle left to the cyclic collector
                ex.rt.exc = None
                continue
            seen.add(key)
            before = (len(ex.preempt_steps), len(ex.choices))
            if shrink and shrink_budget:
                ex = _shrink(body, ex, max_steps, lockdep, shrink_budget, spin_detection,
                             memory)
            res.failures.append(_failure(body, ex, max_steps, lockdep, before, spin_detection,
                                         memory))
            if stop_on_first:
                res.stopped = "failure"
                break

    _guarded(explore_all, body, lambda: res, timeout, stall, max_steps, lockdep,
             spin_detection, memory)
    prog.close()
    res.elapsed = time.perf_counter() - t0
    res.distinct = strat.distinct()
    if strat.exhaustive and res.distinct is None:
        res.distinct = res.runs
    return res


def check_async(coro_fn: Callable[[], Any], strategy: str = "dpor", **options: Any) -> Result:
    """``check`` for an async function: ``coro_fn()`` runs on a deterministic event loop once
    per execution, each of its asyncio tasks an explored task, and the strategy chooses which
    ready task takes its next step (see asyncio_loop.py). Takes ``check``'s options."""
    if not inspect.iscoroutinefunction(coro_fn):
        raise TypeError(f"check_async needs an async function (async def), got {coro_fn!r}")
    return check(coro_fn, strategy, **options)


def _check_parallel(body: Callable[[], Any], strategy: str, workers: int, backend: str, *,
                    max_runs: int | None, max_steps: int, timeout: float | None,
                    stop_on_first: bool, lockdep: bool, shrink: bool, shrink_budget: int,
                    progress: bool | None, spin: bool, preemption_bound: int | None,
                    memory: bool = False, stall: float | None = 10.0) -> Result:
    res = Result(strategy=strategy, preemption_bound=preemption_bound, workers=workers,
                 backend=backend)
    opts = _parallel.Options(strategy, max_steps, lockdep, spin,
                             budget=0.5 if backend == "ray" else 0.1,
                             preemption_bound=preemption_bound, memory=memory, stall=stall,
                             lockdep_settings=_lockdep.settings())
    prog = Progress(f"explore[{strategy} x{workers}]", progress)
    t0 = time.perf_counter()
    try:
        out = _parallel.explore(body, strategy, workers, backend, opts, max_runs=max_runs,
                                timeout=timeout, stop_on_first=stop_on_first,
                                tick=lambda runs: prog.tick(runs, runs))
        if out.stopped == "irqs":  # as check() does: interrupts make it a dfs exploration
            res.strategy, res.note = "dfs", "interrupts: dfs instead of dpor"
            opts.strategy = "dfs"
            out = _parallel.explore(body, "dfs", workers, backend, opts, max_runs=max_runs,
                                    timeout=timeout, stop_on_first=stop_on_first,
                                    tick=lambda runs: prog.tick(runs, runs))
    finally:
        prog.close()
    res.runs, res.pruned, res.steps = out.runs, out.pruned, out.steps
    res.worker_cpu = list(out.per_worker)
    res.exhausted, res.stopped = out.exhausted, out.stopped
    res.distinct = res.runs
    if out.stuck is not None:  # a worker's execution got stuck; its steps are drawn here
        res.failures.append(_stuck_failure(body, out.stuck, max_steps, lockdep, spin, memory,
                                           stall))
        res.elapsed = time.perf_counter() - t0
        return res
    for key, choices in out.failures:
        # found by a worker, replayed here: what is reported is known to replay
        with _pythreads.Substitution(body):
            ex = execute(body, Replay(choices), max_steps, lockdep, spin=spin, memory=memory)
        if ex is None or ex.kind is None or (ex.signature(), ex.where) != key:
            raise RuntimeError(f"explore: a worker's failing schedule {_schedule.encode(choices)}"
                               f" does not fail the same way here (the body is not "
                               f"deterministic): {key} vs {ex and (ex.signature(), ex.where)}")
        before = (len(ex.preempt_steps), len(ex.choices))
        if shrink and shrink_budget:
            with _pythreads.Substitution(body):
                ex = _shrink(body, ex, max_steps, lockdep, shrink_budget, spin, memory)
        res.failures.append(_failure(body, ex, max_steps, lockdep, before, spin, memory))
        if stop_on_first:
            break
    res.elapsed = time.perf_counter() - t0
    return res


class _UpTo(Replay):
    """Replay the steps before the last of ``schedule``, then stop the execution: the last
    step is where it got stuck, so it is drawn from its task's pending operation instead."""

    def choose(self, step: int, current: Pending, enabled: tuple[Pending, ...],
               blocked: tuple[Pending, ...]) -> int | None:
        return None  # (the runtime replayed the schedule: this is the step after it)


def _stuck_render(body: Callable[[], Any], schedule: str, note: str, max_steps: int,
                  lockdep_on: bool, spin: bool, memory: bool,
                  stall: float | None) -> Callable[[bool], str]:
    """The trace table of an execution that was stopped inside a step (blocked in a call the
    explorer does not control, or never reaching a visible operation): its steps up to the
    one that got stuck, and what that task was doing."""
    choices = _schedule.decode(schedule)

    def render(setup: bool) -> str:
        names, rows, tid, text = ["main"], [], 0, note
        tr = None
        if choices:  # (else it got stuck before its first visible operation)
            def again() -> Execution | None:
                return execute(body, _UpTo(choices[:-1], strict=False), max_steps, lockdep_on,
                               tracing=True, spin=spin, memory=memory)

            # The steps before the stuck one may get stuck too (on a lock the abandoned
            # execution still holds, say): re-run them watched, and do without them then.
            with _pythreads.Substitution(body):
                try:
                    tr = _guard.run(again, timeout=None, stall=stall)
                except (_guard.Blocked, _guard.Interrupted):
                    text += "\n(its steps could not be drawn: re-running them got stuck too)"
        if tr is not None:
            rt = tr.rt
            names = [t.name for t in rt.tasks]
            rows = list(rt.trace)
            tid = choices[-1]
            if tid < len(rt.tasks):
                t = rt.tasks[tid]
                rows.append((tid, _kind(t), _label(t), t.p_where))
            else:
                tid = 0
        return _trace.render(names, rows, [(tid, text)],
                             f"{note.split(':')[0]}: schedule {schedule}", setup=setup)

    return render


def _guarded(job: Callable[[], None], body: Callable[[], Any], result: Callable[[], Result],
             timeout: float | None, stall: float | None, max_steps: int = 10_000,
             lockdep_on: bool = True, spin: bool = True, memory: bool = False) -> None:
    """Run ``job`` with threading replaced, in a watched worker (see guard.py); an execution
    stuck outside the explorer's control or never reaching a visible operation ends the
    check with a failure saying where, with its steps so far as schedule and trace table,
    and running out of time ends it as "timeout"."""
    with _pythreads.Substitution(body):
        try:
            _guard.run(job, timeout=timeout, stall=stall)
            return
        except _guard.Blocked as b:
            res = result()
            res.failures.append(_stuck_failure(body, ("blocked", str(b), b.where, b.schedule,
                                                      b.what), max_steps, lockdep_on, spin,
                                               memory, stall))
            res.stopped = "blocked"
        except _guard.Interrupted as i:
            res = result()
            if i.reason == "timeout":
                res.stopped = "timeout"
                res.exhausted = False
            else:
                res.failures.append(_stuck_failure(body, ("hang", i.what, i.where, i.schedule,
                                                          i.what), max_steps, lockdep_on, spin,
                                                   memory, stall))
                res.stopped = "hang"


def _stuck_failure(body: Callable[[], Any], stuck: tuple[str, str, str, str, str],
                   max_steps: int, lockdep_on: bool, spin: bool, memory: bool,
                   stall: float | None) -> Failure:
    """The failure of an execution the watcher stopped: ``stuck`` is (kind, message or what
    it ran, where, schedule so far, what it was doing)."""
    kind, message, where, schedule, what = stuck
    if kind == "hang":
        message = (f"no visible operation for {stall}s: the execution runs Python code that "
                   f"never reaches one ({message}); a loop over plain data needs memory=True "
                   f"or a yield_point()")
    return Failure(kind=kind, schedule=schedule, message=message, where=where,
                   steps=len(_schedule.decode(schedule)),
                   _render=_stuck_render(body, schedule, f"{kind}: {what}", max_steps,
                                         lockdep_on, spin, memory, stall))


def replay(body: Callable[[], Any], schedule: str | list[int], *, max_steps: int = 10_000,
           lockdep: bool = True, spin_detection: bool = True, memory: bool = False,
           timeout: float | None = None, stall: float | None = 10.0) -> Result:
    """Run the one execution ``schedule`` describes; the Result holds its failure, if any.

    After the schedule's last entry the execution continues without preemptions, so a prefix
    is a valid schedule too. A schedule naming a task that cannot run at that step is an error
    (ValueError): it belongs to another body, or the body is not deterministic.
    """
    _check_body(body)
    body = _async(body)
    _check_int("max_steps", max_steps, 1, allow_none=False)
    _check_seconds("timeout", timeout)
    _check_seconds("stall", stall)
    if memory:
        _memtrace.selftest()
    choices = _schedule.decode(schedule)
    t0 = time.perf_counter()
    res = Result(strategy="replay", runs=1, exhausted=True, stopped="replay")

    def one() -> None:
        ex = execute(body, Replay(choices), max_steps, lockdep, spin=spin_detection,
                     memory=memory)
        assert ex is not None
        if isinstance(ex.exc, _guard.Interrupted):
            raise ex.exc
        res.steps = ex.steps
        if ex.kind is not None:
            res.failures.append(_failure(body, ex, max_steps, lockdep, spin=spin_detection,
                                         memory=memory))

    _guarded(one, body, lambda: res, timeout, stall, max_steps, lockdep, spin_detection,
             memory)
    res.elapsed = time.perf_counter() - t0
    return res
