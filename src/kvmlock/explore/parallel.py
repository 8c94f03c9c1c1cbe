"""One exhaustive exploration split across worker processes (or Ray actors) by subtree.

The search tree of DFS or DPOR is cut into subtrees, each explored by one worker. A worker
that runs dry gets a subtree from the queue; when the queue is empty, a busy worker is asked to
give some away (work stealing), and answers after its current step.

* **DFS** files every alternative as a schedule prefix; a prefix names its whole subtree, and
  prefixes form a tree, so handing prefixes out runs every schedule exactly once.
* **DPOR**: every state is decided by the source-set rule (Abdulla et al., POPL 2014,
  Algorithm 1): a race's reversal becomes a new branch unless a task that already has a
  branch there could start it (an *initial* of the wakeup sequence). A worker owns the states
  of its subtree; the states above it belong to the coordinator, which decides the races sent
  to it the same way. That rule does not depend on the order in which a state's branches are
  explored, which is what lets siblings run at the same time; every state's branches enter
  its sleep set in the order they start, so no two complete executions are equivalent. The
  complete executions are one per Mazurkiewicz trace, the count of the sequential (optimal)
  search; runs cut short by a sleep set are counted as pruned.

The coordinator is the calling process. It keeps counts, stops on the first failure when
asked to, and re-runs each failure's schedule itself before reporting it, so a failure found by
a worker is known to replay. A worker that dies makes the whole exploration fail with
:class:`WorkerCrashed`: a result is never silently partial.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmlock.explore.pythreads import Substitution
from kvmlock.explore.strategies.dfs import DFS
from kvmlock.explore.strategies.dpor import DPOR
from kvmlock.explore.strategies.events import Event, Op, independent
from kvmlock.explore.strategies.wakeup import source_branch

#: "inline" runs the workers in turn in the calling process, for testing the scheme
BACKENDS = ("process", "ray", "inline")
#: seconds of exploring before a worker just handed work answers while others wait for some
FIRST_BUDGET = 0.01


class WorkerCrashed(RuntimeError):
    """A worker process or actor ended without answering: the exploration is incomplete."""


# ---------------------------------------------------------------------------- worker side


@dataclass
class Options:
    strategy: str
    max_steps: int
    lockdep: bool
    spin: bool
    budget: float  # seconds of exploring per step before answering the coordinator
    preemption_bound: int | None = None  # dfs only
    memory: bool = False  # data loads and stores as visible operations
    stall: float | None = 10.0  # seconds without a visible operation before a worker's
    # execution counts as stuck (see guard.py)
    #: the calling process's lockdep settings (``lockdep.settings()``), for workers that
    #: did not inherit them (Ray's)
    lockdep_settings: dict[str, Any] | None = None


@dataclass
class Reply:
    runs: int = 0
    pruned: int = 0
    steps: int = 0
    failures: list[tuple[tuple, list[int]]] = field(default_factory=list)  # (key, choices)
    upper: list[tuple] = field(default_factory=list)  # DPOR races reversing above the subtree
    states: list[tuple] = field(default_factory=list)  # DPOR states handed to the coordinator
    branches: list[tuple] = field(default_factory=list)  # subtrees handed over
    idle: bool = False
    error: str = ""
    # an execution got stuck: ("blocked" | "hang", message, where, schedule, what)
    stuck: tuple[str, str, str, str, str] | None = None
    irqs: bool = False  # DPOR met an interrupt: the exploration must be redone with DFS
    busy: float = 0.0  # CPU seconds the worker spent on this step


class Worker:
    """Explores the subtrees it is given, a step (a time budget) at a time."""

    def __init__(self, body: Callable[[], Any], opts: Options) -> None:
        self.reset(body, opts)

    def reset(self, body: Callable[[], Any], opts: Options) -> None:
        """A new exploration (a Ray actor kept for the next one; see ray_backend)."""
        self.body = body
        self.opts = opts
        if opts.lockdep_settings is not None:
            from kvmlock import lockdep

            lockdep.use_settings(opts.lockdep_settings)
        self.strat: DFS | DPOR | None = None
        self.seen: set[tuple] = set()
        self.memo: Any = None  # lockdep's chain memory, for every subtree this worker explores
        self.halted = False

    def halt(self) -> None:
        """End the step under way after its current execution: the exploration stopped (a
        Ray actor kept for the next one answers this while it explores; see ray_backend)."""
        self.halted = True

    def step(self, item: tuple | None, donate: bool, budget: float | None = None) -> Reply:
        from kvmlock.explore import guard

        t0 = time.process_time()  # CPU time: what other processes take is not the work's
        try:
            # watched as a sequential check is: an execution stuck in a call the explorer
            # does not control, or never reaching a visible operation, is reported, not
            # waited for
            # (threading is replaced here, outside the watched job: a job abandoned
            # stuck must not leave it replaced)
            with Substitution(self.body):  # plain threading code runs explored here too
                out = guard.run(lambda: self._step(item, donate, budget), timeout=None,
                                stall=self.opts.stall)
        except guard.Blocked as b:
            self.strat = None
            return Reply(stuck=("blocked", str(b), b.where, b.schedule, b.what))
        except guard.Interrupted as i:
            self.strat = None
            return Reply(stuck=("hang", i.what, i.where, i.schedule, i.what))
        except BaseException:  # noqa: BLE001 - the coordinator reports it
            return Reply(error=traceback.format_exc())
        out.busy = time.process_time() - t0
        return out

    def _step(self, item: tuple | None, donate: bool, budget: float | None) -> Reply:
        from kvmlock.explore.engine import execute

        o = self.opts
        out = Reply()
        if item is not None:
            if item[0] == "dfs":
                self.strat = DFS(o.preemption_bound).subtree(item[1], item[2])
            else:
                self.strat = DPOR().subtree(item[1], item[2], item[3], item[4])
        strat = self.strat
        deadline = time.perf_counter() + (o.budget if budget is None else budget)
        return self._explore(strat, o, out, deadline, donate, execute)

    def _explore(self, strat: Any, o: Options, out: Reply, deadline: float, donate: bool,
                 execute: Callable[..., Any]) -> Reply:
        from kvmlock.explore.guard import Interrupted

        if self.memo is None:
            from kvmlock.lockdep import Memo

            self.memo = Memo()
        while strat is not None:
            ex = execute(self.body, strat, o.max_steps, o.lockdep, spin=o.spin, memory=o.memory,
                         memo=self.memo)
            if ex is not None and isinstance(ex.exc, Interrupted):
                raise ex.exc  # stopped by the watcher: not the body's failure
            if ex is not None and isinstance(strat, DPOR) and ex.irqs:
                out.irqs = True  # (see engine.check: no dependency expresses an interrupt)
                self.strat = None
                return out
            if isinstance(strat, DPOR) and strat.upper:
                out.upper.extend(strat.upper)
                strat.upper = []
            if ex is None:
                self.strat = strat = None
                break
            if ex.outcome == "pruned":
                out.pruned += 1
            else:
                out.runs += 1
                out.steps += ex.steps
                if ex.kind is not None:
                    key = (ex.signature(), ex.where)
                    if key not in self.seen:
                        self.seen.add(key)
                        out.failures.append((key, list(ex.choices)))
            # (a new failure is answered at once: the coordinator may be waiting for the first)
            if donate or out.failures or time.perf_counter() > deadline or self.halted:
                break
        if strat is None:
            out.idle = True
        elif donate:
            if isinstance(strat, DPOR):
                out.states, out.branches = strat.donate()
            else:
                out.branches = [("dfs", p, cost) for p, cost in strat.donate()]
        return out


# ---------------------------------------------------------------------------- coordinator


class _Upper:
    """A DPOR state above every worker's subtree: its sleep set, the branches started from it
    (task -> operation), those queued, the tasks that can run there, and its waits' maps."""

    __slots__ = ("sleep", "done", "queued", "enabled", "snap")

    def __init__(self, sleep: dict[int, Op], done: dict[int, Op], enabled: set[int],
                 snap: tuple[dict, dict]) -> None:
        self.sleep = sleep
        self.done = done
        self.queued: set[int] = set()
        self.enabled = enabled
        self.snap = snap


class Coordinator:
    """The queue of subtrees and the DPOR states above them; see the module docstring."""

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.queue: collections.deque[tuple] = collections.deque()
        self.upper: dict[tuple[int, ...], _Upper] = {}
        if strategy == "dfs":
            self.queue.append(("dfs", (), 0))
        else:
            self.queue.append(("dpor", (), 0, None, None))

    def next_item(self) -> tuple:
        """The next subtree to hand out (the oldest: the largest)."""
        it = self.queue.popleft()
        if it[0] == "dfs":
            return it
        _kind, path, q, op_q, guide = it
        if not path and op_q is None:
            return ("dpor", (), {}, None, ({}, {}))  # the whole tree
        node = self.upper[path]
        sleep = {t: op for t, op in node.sleep.items() if t != q and independent(op, op_q)}
        for t, op in node.done.items():
            if t != q and t not in sleep and independent(op, op_q):
                sleep[t] = op
        node.done[q] = op_q
        node.queued.discard(q)
        return ("dpor", (*path, q), sleep, guide, node.snap)

    def merge(self, r: Reply) -> None:
        for path, sleep, done, enabled, snap in r.states:
            self.upper[path] = _Upper(sleep, done, enabled, snap)
        for b in r.branches:
            if b[0] == "dfs":
                self.queue.append(b)
            else:
                path, q, op, guide = b
                self.upper[path].queued.add(q)
                self.queue.append(("dpor", path, q, op, guide))
        for path, seq in r.upper:
            self._offer(path, seq)

    def _offer(self, path: tuple[int, ...], seq: list[Event]) -> None:
        node = self.upper[path]
        entry = source_branch(seq, node.done.keys() | node.queued | node.sleep.keys(),
                              node.enabled)
        if entry is not None:
            node.queued.add(entry[0])
            self.queue.append(("dpor", path, entry[0], entry[1], entry[2]))


# ---------------------------------------------------------------------------- transports


class _Processes:
    """Workers as forked processes (the body needs no pickling), one pipe each."""

    def __init__(self, n: int, body: Callable[[], Any], opts: Options) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conns = []
        self.procs = []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(b, body, opts), daemon=True)
            p.start()
            b.close()
            self.conns.append(a)
            self.procs.append(p)

    def send(self, i: int, item: tuple | None, donate: bool,
             budget: float | None = None) -> None:
        try:
            self.conns[i].send((item, donate, budget))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._dead(i)

    def recv_any(self, timeout: float | None = None) -> list[tuple[int, Reply]]:
        ready = multiprocessing.connection.wait(self.conns, timeout)
        out = []
        for c in ready:
            i = self.conns.index(c)
            try:
                out.append((i, c.recv()))
            except (EOFError, ConnectionResetError, OSError):
                self._dead(i)
        return out

    def _dead(self, i: int) -> None:
        p = self.procs[i]
        p.join(1)
        raise WorkerCrashed(f"explore: worker {i} (pid {p.pid}) died (exit code "
                            f"{p.exitcode}); the exploration is incomplete")

    def close(self, clean: bool = False) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
            c.close()
        for p in self.procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)


def _serve(conn: Any, body: Callable[[], Any], opts: Options) -> None:
    from kvmlock.explore import runtime as sim

    sim._POOLS.pool = []  # the parent's parked greenlets are not this process's
    w = Worker(body, opts)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        conn.send(w.step(*msg))
    conn.close()
    os._exit(0)  # skip the parent's atexit handlers (pytest's, Ray's) in the fork


class _Inline:
    """Workers that take turns in this process, each giving work away after every execution:
    the most splitting and stealing there can be, deterministic, for testing the scheme."""

    def __init__(self, n: int, body: Callable[[], Any], opts: Options) -> None:
        self.workers = [Worker(body, opts) for _ in range(n)]
        self.pending: collections.deque[tuple[int, tuple | None]] = collections.deque()

    def send(self, i: int, item: tuple | None, donate: bool,
             budget: float | None = None) -> None:
        self.pending.append((i, item))

    def recv_any(self, timeout: float | None = None) -> list[tuple[int, Reply]]:
        i, item = self.pending.popleft()
        return [(i, self.workers[i].step(item, True))]

    def close(self, clean: bool = False) -> None:
        return None


class _Ray:
    """Workers as Ray actors on the cluster ``ray.init`` connected to."""

    def __init__(self, n: int, body: Callable[[], Any], opts: Options) -> None:
        from kvmlock.explore import ray_backend

        self.ray, self.actors = ray_backend.start(n, body, opts)
        self.pending: dict[Any, int] = {}
        self.budget = opts.budget

    def send(self, i: int, item: tuple | None, donate: bool,
             budget: float | None = None) -> None:
        self.pending[self.actors[i].step.remote(item, donate, budget)] = i

    def recv_any(self, timeout: float | None = None) -> list[tuple[int, Reply]]:
        ray = self.ray
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            i = self.pending.pop(ref)
            try:
                out.append((i, ray.get(ref)))
            except ray.exceptions.RayError as exc:
                raise WorkerCrashed(f"explore: Ray worker {i} failed ({type(exc).__name__}); "
                                    f"the exploration is incomplete") from None
        return out

    def close(self, clean: bool = False) -> None:
        from kvmlock.explore import ray_backend

        ray_backend.release(self.actors, self.pending, clean, self.budget)


# ---------------------------------------------------------------------------- the loop


@dataclass
class Outcome:
    runs: int = 0
    pruned: int = 0
    steps: int = 0
    failures: list[tuple[tuple, list[int]]] = field(default_factory=list)
    exhausted: bool = False
    stopped: str = ""
    # what the overheads are made of (benchmarks/bench_parallel.py models them)
    busy: float = 0.0  # CPU seconds of exploring, summed over the workers
    per_worker: list[float] = field(default_factory=list)  # the same, worker by worker
    messages: int = 0  # replies the coordinator handled
    handed: int = 0  # subtrees handed out
    coordinator: float = 0.0  # CPU seconds the coordinator spent deciding (not waiting)
    started: float = 0.0  # seconds until every worker was ready to take work
    stuck: tuple[str, str, str, str, str] | None = None  # see Reply.stuck


def explore(body: Callable[[], Any], strategy: str, workers: int, backend: str,
            opts: Options, *, max_runs: int | None, timeout: float | None,
            stop_on_first: bool, tick: Callable[[int], None] | None = None) -> Outcome:
    """Run the exploration on ``workers`` workers; see the module docstring."""
    coord = Coordinator(strategy)
    transport = {"ray": _Ray, "inline": _Inline}.get(backend, _Processes)
    t0 = time.perf_counter()
    pool = transport(workers, body, opts)
    out = Outcome(started=time.perf_counter() - t0, per_worker=[0.0] * workers)
    seen: set[tuple] = set()
    busy: set[int] = set()
    idle = list(range(workers))
    clean = False  # the workers ended well: kept Ray actors may serve the next exploration
    try:
        while True:
            handed = []
            while idle and coord.queue:
                handed.append((idle.pop(0), coord.next_item()))
            # Workers left waiting for a share: those just handed work answer early, so that
            # they give some away soon (at their next step) unless done by then, as most
            # small explorations are; waiting the whole budget before each split left the
            # others idle that long.
            early = min(FIRST_BUDGET, opts.budget) if idle else None
            for i, item in handed:
                pool.send(i, item, False, early)
                out.handed += 1
                busy.add(i)
            if not busy:
                out.exhausted = True
                out.stopped = "exhausted"
                break
            # (a worker stuck for good answers within its stall; the timeout is kept here)
            left = None if timeout is None else max(0.0, t0 + timeout - time.perf_counter())
            replies = pool.recv_any(None if left is None else left + 0.05)
            t1 = time.process_time()
            for i, r in replies:
                out.messages += 1
                out.busy += r.busy
                out.per_worker[i] += r.busy
                if r.error:
                    raise WorkerCrashed(f"explore: worker {i} failed:\n{r.error}")
                if r.stuck is not None:
                    out.stuck = r.stuck
                    out.stopped = r.stuck[0]
                    return out
                if r.irqs:
                    out.stopped = "irqs"
                    return out
                out.runs += r.runs
                out.pruned += r.pruned
                out.steps += r.steps
                for key, choices in r.failures:
                    if key not in seen:
                        seen.add(key)
                        out.failures.append((key, choices))
                coord.merge(r)
                if r.idle:
                    busy.discard(i)
                    idle.append(i)
                else:
                    pool.send(i, None, bool(idle) and not coord.queue)
            out.coordinator += time.process_time() - t1
            if tick is not None:
                tick(out.runs)
            if stop_on_first and out.failures:
                out.stopped = "failure"
                break
            if max_runs is not None and out.runs >= max_runs:
                out.stopped = "max_runs"
                break
            if timeout is not None and time.perf_counter() - t0 > timeout:
                out.stopped = "timeout"
                break
        clean = True
    finally:
        pool.close(clean)
    return out
