"""The race audit: plain data accesses that no visible operation orders.

An exhaustive exploration (DPOR, DFS) tries every order of the *visible* operations; the code a
task runs between two of them is one atomic step. "Exhausted" is only a proof if every access
to data shared between tasks is a visible operation itself or is ordered by visible operations
(done under a lock both tasks take, published before a spawn, read after a join). A plain read
of shared data that some other task writes, with nothing ordering the two, is an order the
search never tries: its verdict may be false.

The audit finds such pairs. It runs a body a few times with the data-access tracer of
``memory=True`` (``memtrace.py``) restricted to a chosen package (a model's own code, which
``memory=True`` never traces: it is kvmlock's), but an access here is *recorded*, not made a
scheduling point. Each execution's visible operations get vector clocks as DPOR's own
(``strategies/events.py``: program order, dependent operations on one object, spawn, join,
plus each task's end, which a join waits for). Each plain access of task ``p`` lies between two
of ``p``'s visible operations, ``e_k`` and ``e_k+1``. Access ``a`` of ``p`` is ordered before a
later access ``b`` of ``q`` when ``e_k+1`` happens before the last visible operation ``q`` ran
before ``b``: then every reordering DPOR considers equivalent keeps ``a`` first. Two accesses
to one location by different tasks, at least one a write, ordered neither way, are a
*finding*.

One exception makes the model's own visible steps work: an access made in the step of a
visible operation that the traced code itself made (``rt.point``, a wait queue's ``point`` or
``wait_for``: the model saying "this access *is* a visible step"), by the function that made it
or a function it calls, is ordered as that operation is (its interval ends at ``e_k``, not
``e_k+1``). Once that function has returned, its caller's accesses are separate again: the
payload of ``with q: q.point(...); ...`` is that block, not whatever the caller does next.
A field whose class attribute says an access is a visible operation of its own
(``visible_access(obj, kind)``, as ``guarded_by(visible=True)`` does) is credited to that
operation: the access is ordered as the operation is, both as the earlier and as the later of a
pair, since the search orders the operation against the other task's every way.
Operations of a primitive (a lock's acquire and release, an atomic, SRCU, RCU: code outside
the traced package) carry their own payload; the traced code after them is a separate access,
so a store just after an unlock is not ordered by the unlock. Traced code that a primitive
itself calls right after an operation of its own -- the condition ``RCUWait.wait`` checks at
its visible read of ``reads``, an SRCU callback run at its grace period's end -- is that
operation's payload, as a callee of the frame that made it.

What is a location: an attribute of an object; an item of a container by key (a whole-container
operation, ``append``, ``pop``, iteration, conflicts with every item); a container's length
(read by ``len`` and a truth test, written by a whole-container write, a store of a new key, a
``del`` or a slice store; a store of an existing item leaves it); a module global; a closure
cell. A finding is named by the object's type and attribute (a container by the
attribute it was loaded from) and the two code sites. A race that is benign on purpose is
declared where the data is: a class attribute of the field's name whose ``racy_why`` says why
(``kvmlock.sync.data_racy("...")``); its accesses are counted as excused with that reason,
never reported.

Limits: the audit sees the executions it runs (``runs`` of them), so a race needing an order
none of them took is missed; conditions of blocking waits are evaluated by the scheduler,
untraced. It is a check on a model's fidelity to its own proof, not a proof.
"""

from __future__ import annotations

import dis
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmlock.explore import memtrace as _mt
from kvmlock.explore.records import ACQ_NONE, ACQ_WAIT, pending
from kvmlock.explore.runtime import SimRuntime
from kvmlock.explore.strategies.base import Strategy
from kvmlock.explore.strategies.events import Events

__all__ = ["Audit", "Finding", "audit", "scope_of"]

_EXPLORE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_RUNTIME = os.path.join(os.path.dirname(os.path.dirname(_EXPLORE)), "runtime.py")
_PKG = os.path.dirname(os.path.dirname(_EXPLORE)) + os.sep  # kvmlock/
_HASHABLE = (int, str, bytes, float, bool, type(None))
#: a container's length as a location of its own: read by ``len`` and a truth test, written by
#: what adds or removes an item (a whole-container write, a new key, a ``del``, a slice store)
_LEN = ("len",)
#: instructions that test a value's truth (for a container: whether it is empty, its length)
_TRUTH = frozenset(dis.opmap[n] for n in (
    "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_BACKWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE",
    "POP_JUMP_BACKWARD_IF_TRUE", "JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP", "UNARY_NOT",
    "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE") if n in dis.opmap)
_DELETE_SUBSCR = dis.opmap["DELETE_SUBSCR"]
_scopes: dict[tuple[str, ...], _mt.Scope] = {}


def scope_of(paths: Iterable[str]) -> _mt.Scope:
    """The tracer scope of these directories or files (one per set of paths, so the tables
    made for their code are made once per process)."""
    roots = tuple(sorted({os.path.abspath(p) for p in paths}))
    if not roots:
        raise ValueError("audit: name at least one directory or file to trace")
    sc = _scopes.get(roots)
    if sc is None:
        dirs = tuple(r + os.sep for r in roots if os.path.isdir(r))
        files = frozenset(r for r in roots if not os.path.isdir(r))

        def user(fn: str) -> bool:
            fn = os.path.abspath(fn)
            return fn.startswith(dirs) or fn in files

        # calls into kvmlock's own code (primitives, the runtime) hand it containers as the
        # payload of a visible operation, never as a plain access
        sc = _scopes[roots] = _mt.Scope(user, lambda fn: os.path.abspath(fn).startswith(_PKG))
        sc.roots = roots  # type: ignore[attr-defined]
    return sc


@dataclass(frozen=True)
class Site:
    """Where an access was made."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"


@dataclass
class Finding:
    """Two conflicting plain accesses of one location by two tasks, ordered neither way."""

    location: str  #: "VCPU.requests", "VM.stats[]", ...
    first: Site  #: the access that ran first in the execution that showed it
    second: Site
    first_write: bool
    second_write: bool
    tasks: tuple[str, str]
    run: int  #: the execution (from 0) that showed it first
    count: int = 1  #: how many times it was seen, over all executions

    def key(self) -> tuple:
        return (self.location, *sorted((str(self.first), str(self.second))))

    def __str__(self) -> str:
        def rw(w: bool) -> str:
            return "write" if w else "read"
        return (f"{self.location}: {rw(self.first_write)} at {self.first} [{self.tasks[0]}] "
                f"vs {rw(self.second_write)} at {self.second} [{self.tasks[1]}]")

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "first": str(self.first),
                "second": str(self.second), "first_write": self.first_write,
                "second_write": self.second_write, "tasks": list(self.tasks),
                "run": self.run, "count": self.count}


@dataclass
class Audit:
    """What auditing a body came to."""

    runs: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: (location, reason) -> accesses excused by a ``racy_why`` declaration
    excused: dict[tuple[str, str], int] = field(default_factory=dict)
    accesses: int = 0  #: plain accesses recorded
    failures: list[str] = field(default_factory=list)  #: executions that did not end cleanly

    @property
    def clean(self) -> bool:
        return not self.findings


_EXIT_LABEL = "task end"


class _Recorder(_mt.Tracer):
    """The memory tracer of one audited execution: records accesses with vector clocks."""

    def __init__(self, rt: SimRuntime, scope: _mt.Scope, into: Audit, run: int,
                 seen: dict[tuple, Finding]) -> None:
        self.scope = scope  # (read by Tracer.__init__)
        self.ev = Events()
        #: tid -> the frame that made its last visible operation, when the traced code made it
        #: (what that frame and its callees do before the next one is the operation's payload)
        self.glued: dict[int, Any] = {}
        #: location key -> {tid: [last read, last write]}, each (interval end, site) or None
        self.hist: dict[tuple, dict[int, list[Any]]] = {}
        self.items: dict[int, set[Any]] = {}  # id(container) -> its item names seen
        #: id(container) -> (label, why) of the attribute it was loaded from
        self.owner: dict[int, tuple[str, str | None]] = {}
        self.keep: dict[int, Any] = {}  # every object keyed by id, kept alive for the run
        self.why: dict[tuple[type, str], str | None] = {}
        #: (class, attribute) -> the field's ``visible_access`` (None: it has none)
        self.steps: dict[tuple[type, str], Any] = {}
        #: tid -> an access its next visible operation makes (label, keys, write, site)
        self.stepped: dict[int, tuple[str, list[tuple], bool, Site, int]] = {}
        self.kind = -1  # the instruction kind of the access being recorded
        self.into, self.run, self.found = into, run, seen
        self.frame: Any = None
        self.key_of: Any = None
        super().__init__(rt)

    # ------------------------------------------------------------------ visible operations
    def _sim_stop(self, t: Any, op: Any, pred: Any, wq: Any) -> None:
        glue = None
        if op[1] is not None and op[5] in (ACQ_NONE, ACQ_WAIT):
            f = sys._getframe(1)
            while f is not None and (f.f_code.co_filename.startswith(_EXPLORE)
                                     or f.f_code.co_filename == _RUNTIME):
                f = f.f_back
            # traced code's own step, or a primitive's that calls back into traced code (the
            # condition RCUWait.wait checks at its read of ``reads``, an SRCU callback run at
            # its grace period's end): what that frame's callees do next is the payload
            if f is not None and (self.scope.traced(f.f_code.co_filename)
                                  or f.f_code.co_filename.startswith(_PKG)):
                glue = f
        super()._sim_stop(t, op, pred, wq)
        # the operation executes now
        self.ev.record(op, False, len(self.rt.tasks) if op[3] == "spawn" else -1, False)
        self.glued[t.tid] = glue
        made = self.stepped.pop(t.tid, None)
        if made is not None and not self.rt.aborting:
            # the access that announced this operation (a visible field's) is the operation
            clock = self.ev.task_clock[t.tid]
            self._record(t, made[0], made[1], made[2], clock, clock[t.tid], made[3], made[4])

    def task(self, fn: Any, spawner: Any = None) -> Any:
        if not callable(fn):
            return fn

        def ended(*args: Any) -> Any:
            try:
                return fn(*args)
            finally:
                rt = self.rt
                t = rt.current
                if t is not None and not rt.aborting:
                    # a join waits for this: what the task did last is ordered before it
                    self.ev.record(pending(t.tid, None, "exit", False, _EXIT_LABEL, ACQ_NONE,
                                           False), False, -1, False)
                    self.glued[t.tid] = None

        ended.__name__ = getattr(fn, "__name__", "")
        return super().task(ended, spawner)

    # ------------------------------------------------------------------ plain accesses
    def _on_op(self, frame: Any, op: tuple[int, Any]) -> None:
        self.frame = frame
        kind, a = op
        self.kind = kind
        self.resizes = False
        if kind == _mt._S_LOAD or kind == _mt._S_STORE:
            self.key_of = k = _mt._stack(frame, 1)
            if kind == _mt._S_STORE:
                self.resizes = self._resizes(frame, _mt._stack(frame, 2), k)
        elif kind == _mt._A_LOAD:
            obj = _mt._stack(frame, 1)
            d = getattr(obj, "__dict__", None)
            if type(d) is dict:
                v = d.get(a)
                if isinstance(v, _mt._CONTAINERS) and id(v) not in self.owner:
                    self.owner[id(v)] = (f"{type(obj).__name__}.{a}", self._why(type(obj), a))
                    self.keep[id(v)] = v
        super()._on_op(frame, op)

    @staticmethod
    def _resizes(frame: Any, obj: Any, key: Any) -> bool:
        """Whether a store or delete of ``obj[key]`` (about to run) changes ``len(obj)``."""
        if frame.f_code.co_code[frame.f_lasti] == _DELETE_SUBSCR or isinstance(key, slice):
            return True
        if isinstance(obj, (list, deque, bytearray)):
            return False  # an index store replaces an item
        try:
            return key not in obj  # a mapping's new key
        except TypeError:
            return True  # (the store itself will fail)

    def _why(self, cls: type, name: str) -> str | None:
        k = (cls, name)
        if k in self.why:
            return self.why[k]
        why = None
        for c in cls.__mro__:
            v = c.__dict__.get(name)
            if v is not None:
                why = getattr(v, "racy_why", None)
                break
        self.why[k] = why
        return why

    def _step(self, obj: object, name: str) -> bool:
        """Whether this access of attribute ``name`` is made by a visible operation of its
        own: the field's class attribute says so (``visible_access``, as a visible
        ``guarded_by`` field does), for this object and this kind of access."""
        cls = type(obj)
        k = (cls, name)
        step = self.steps.get(k, False)
        if step is False:
            step = None
            for c in cls.__mro__:
                v = c.__dict__.get(name)
                if v is not None:
                    step = getattr(v, "visible_access", None)
                    break
            self.steps[k] = step
        if step is None:
            return False
        kind = self.kind
        return bool(step(obj, "delete" if kind == _mt._A_DEL else
                         "write" if kind == _mt._A_STORE else "read"))

    def _site(self) -> Site:
        f = self.frame
        fn = os.path.abspath(f.f_code.co_filename)
        for r in self.scope.roots:  # type: ignore[attr-defined]
            if fn.startswith(r):
                fn = os.path.relpath(fn, os.path.dirname(r))
                break
        return Site(fn, f.f_lineno, f.f_code.co_name)

    def _access(self, obj: object, name: Any, write: bool, fmt: str, arg: Any,
                base: int = 0, top: int = -1, ours: int = 5) -> None:
        rt = self.rt
        t = rt.current
        if t is None or rt.aborting or self.frame is None:
            return
        oid = id(obj)
        whole = step = resizes = False
        if fmt is _mt._L_ATTR:
            why = self._why(type(obj), name)
            label = f"{type(obj).__name__}.{name}"
            step = why is None and self._step(obj, name)
        elif fmt is _mt._L_NAME:
            why, label = None, f"{arg}"
            name = ("name", arg)  # (a global's or a closure cell's)
        else:
            owned = self.owner.get(oid)
            label, why = (f"{owned[0]}[]", owned[1]) if owned else (f"{type(obj).__name__}[]",
                                                                       None)
            if fmt is _mt._L_ITEM:
                k = self.key_of
                if not isinstance(k, _HASHABLE):
                    if isinstance(k, tuple) and all(isinstance(x, _HASHABLE) for x in k):
                        pass
                    else:
                        self.keep[id(k)] = k
                        k = ("id", id(k))
                name = ("[]", k)
                self.items.setdefault(oid, set()).add(name)
                resizes = write and self.resizes
            elif not write and (fmt is _mt._L_CALL and arg == "len" or (
                    self.kind == _mt._READ1
                    and self.frame.f_code.co_code[self.frame.f_lasti] in _TRUTH)):
                name = _LEN  # ``len(x)``, ``if x:``: how many items, not which
                self.items.setdefault(oid, set()).add(name)
            else:
                name = None
                whole = True
        if why is not None:
            ex = self.into.excused
            ex[label, why] = ex.get((label, why), 0) + 1
            return
        self.into.accesses += 1
        if oid not in self.keep:
            self.keep[oid] = obj
        keys = [(oid, name)]
        marks = 1
        if whole:
            keys += [(oid, n) for n in self.items.get(oid, ())]
        elif name is _LEN:
            keys.append((oid, None))  # what adds or removes an item as a whole
        elif type(name) is tuple and name and name[0] == "[]":
            if resizes:  # a store or delete of an item that changes the length too
                keys.append((oid, _LEN))
                self.items[oid].add(_LEN)
                marks = 2
            keys.append((oid, None))
        if step:
            # the instruction runs the field's own visible operation next: the access is
            # that operation, ordered (both ways) as it is, not by the step before it
            self.stepped[t.tid] = (label, keys, write, self._site(), marks)
            return
        tid = t.tid
        clock = self.ev.task_clock[tid]
        here = clock[tid] + 1
        g = self.glued.get(tid)
        if g is not None:
            f = self.frame
            while f is not None and f is not g:
                f = f.f_back
            if f is not None:
                here -= 1  # the payload of the visible operation its own frame made
        self._record(t, label, keys, write, clock, here, None, marks)

    def _record(self, t: Any, label: str, keys: list[tuple], write: bool, clock: Any,
                here: int, site: Site | None, marks: int = 1) -> None:
        """Check an access of task ``t`` (whose clock is ``clock``, its interval ending at
        its visible operation number ``here``) against every other task's last ones at
        ``keys``, then remember it at the first ``marks`` of them."""
        rt = self.rt
        tid = t.tid
        for key in keys:
            st = self.hist.get(key)
            if not st:
                continue
            # two changes of a length commute (an item added, another removed): only a read
            # of it conflicts with one (their items, when the same, conflict as items)
            counted = key[1] is _LEN
            for p, rw in st.items():
                if p == tid:
                    continue
                seen_p = clock[p] if p < len(clock) else 0
                for prior, prior_write in ((rw[1], True), (rw[0], False)):
                    if prior is None or not (write or prior_write) or seen_p >= prior[0] or (
                            counted and write and prior_write):
                        continue
                    if site is None:
                        site = self._site()
                    self._found(label, prior[1], site, prior_write, write,
                                (rt.tasks[p].name, t.name))
        mark = (here, site or self._site())
        for key in keys[:marks]:
            st = self.hist.get(key)
            if st is None:
                st = self.hist[key] = {}
            rw = st.get(tid)
            if rw is None:
                rw = st[tid] = [None, None]
            rw[1 if write else 0] = mark

    def _found(self, label: str, first: Site, second: Site, w1: bool, w2: bool,
               tasks: tuple[str, str]) -> None:
        f = Finding(label, first, second, w1, w2, tasks, self.run)
        k = f.key()
        old = self.found.get(k)
        if old is not None:
            old.count += 1
            return
        self.found[k] = f
        self.into.findings.append(f)


def audit(body: Callable[[], Any], paths: Sequence[str], *, runs: int = 20,
          strategy: str | Strategy = "dpor", seed: int = 0, max_steps: int = 5000,
          lockdep: bool = False) -> Audit:
    """Run ``body`` ``runs`` times (the first executions of ``strategy``: "dpor", "random" or
    a Strategy object) tracing the code under ``paths``, and report its unordered conflicting
    plain accesses (see the module docstring)."""
    from kvmlock.explore import engine as _engine

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"audit: runs must be a positive integer, got {runs!r}")
    _mt.selftest()
    scope = scope_of(paths)
    if isinstance(strategy, Strategy):
        strat = strategy
    elif strategy in ("dpor", "random", "dfs", "pct"):
        strat = _engine._make(strategy, seed, None, 3)
    else:
        raise ValueError(f"audit: unknown strategy {strategy!r}")
    res = Audit()
    seen: dict[tuple, Finding] = {}
    for run in range(runs):
        def make(rt: SimRuntime, run: int = run) -> _Recorder:
            return _Recorder(rt, scope, res, run, seen)

        ex = _engine.execute(body, strat, max_steps, lockdep, tracer=make)
        if ex is None:
            break
        res.runs += 1
        out = ex.rt.outcome
        if out is not None:
            res.failures.append(f"run {run}: {out}"
                                + (f" ({type(ex.rt.exc).__name__}: {ex.rt.exc})"
                                   if ex.rt.exc is not None else ""))
    return res
