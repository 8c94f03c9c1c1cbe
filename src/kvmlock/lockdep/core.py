"""The validator's engine: per-task held-lock stacks, the chain cache and validation.

Hot path. A held-lock stack entry carries the chain-cache node of the chain it ends, and the
cache is a trie keyed by (class, read, trylock) ids, so an acquire whose chain was seen before
is one dict lookup plus a list append, with no lock taken: the first time a chain is seen
(a miss) it is validated under the graph lock and added to the trie. Releasing the most recent
lock is a compare and a pop. Everything else (out-of-order release, reports) is the slow path.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kvmlock import runtime as _rt
from kvmlock.lockdep.graph import DepGraph, Link, LockClass, dep_bit, find_strong_path, path_edges
from kvmlock.lockdep.report import Edge, HeldLock, Report
from kvmlock.lockdep.where import user_site

KINDS = frozenset(
    {"mutex", "spinlock", "raw_spinlock", "rwlock", "rwsem", "percpu_rwsem", "srcu", "pseudo",
     "threading"}
)
#: Locks that spin: holding one, a task must not sleep (rwlock_t is a spinning lock too).
SPINNING = frozenset({"spinlock", "raw_spinlock", "rwlock"})
#: Locks whose (blocking) acquire may sleep.
SLEEPING = frozenset({"mutex", "rwsem", "percpu_rwsem"})
MODES = ("warn", "raise", "collect")


class LockdepError(RuntimeError):
    """Raised by the offending lock operation in "raise" mode; ``.report`` has the details."""

    def __init__(self, report: Report) -> None:
        super().__init__(str(report))
        self.report = report


class Limits:
    """Table sizes; crossing one prints one message and switches validation off."""

    __slots__ = ("max_classes", "max_edges", "max_chains", "max_depth")

    def __init__(self) -> None:
        self.max_classes = 8192
        self.max_edges = 32768
        self.max_chains = 65536
        self.max_depth = 48

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


LIMITS = Limits()


class State:
    """Everything lockdep knows in one world: classes, graph, chain cache, reports, mode."""

    def __init__(self, mode: str = "warn") -> None:
        self.on = True
        self.mode = mode
        self.lock = _thread.allocate_lock()  # the graph lock: chain-cache misses only
        self.owner = 0  # thread ident inside the graph lock (re-entry guard, see _miss)
        self.classes: dict[LockClass, str] = {}  # classes used in this state -> kind
        self.after: dict[LockClass, dict[LockClass, Link]] = {}  # the dependency graph
        self.nedges = 0
        self.nchains = 0
        self.root: dict[int, Any] = {}
        self.reports: list[Report] = []
        self.refused: dict[tuple, Edge] = {}  # dependencies not added because they closed a cycle
        self.seen: set[tuple] = set()
        self.overflow: str | None = None
        self.off_token: object = None  # new object each time validation is switched off


_state = State()
_ON = True  # mirrors _state.on, read by the hot path as a plain global


def _sync_on() -> None:
    global _ON
    _ON = _state.on


# Classes are global (a name means the same class in every state); graphs are per state.
_CLASSES: dict[tuple[object, int], LockClass] = {}
_CLASSES_LOCK = _thread.allocate_lock()


def _klass(key: object, name: str, kind: str, subclass: int) -> LockClass:
    k = (key, subclass)
    cls = _CLASSES.get(k)
    if cls is None:
        with _CLASSES_LOCK:
            cls = _CLASSES.get(k)
            if cls is None:
                cls = _CLASSES[k] = LockClass(name, kind, key, subclass, len(_CLASSES))
    return cls


# A task's held-lock stack is a plain list (the fastest container to index and append to):
# element 0 is a header ``[None, root of the state's chain trie, locks to release quietly]``,
# then one ``(map, node)`` per held lock, where ``node`` is the chain-cache node of the chain
# ending with that lock. A node's ``_INFO`` entry says what the lock is: ``(class, read,
# trylock, first-seen-where)``. When the trie is replaced (reset, enable) the old one is
# emptied, so a stack from before misses on its next acquire and is restarted there.
_INFO = -1  # real chain-node keys (class id * 8 + read * 2 + trylock) are >= 0
_SYNC = 6  # low bits of the chain-node key of a synchronize()
_NEST = 7  # low bits of the chain-node key of an acquire under a nest lock

_get_ident = _thread.get_ident
_THREADS = _rt.THREADS
_TLS = _rt.THREADS._tls


def _stack() -> list:
    """The current task's held stack (created on first use and registered with the state)."""
    t = _TLS if _rt.RT is _THREADS else _rt.current_task()
    held = t.lockdep
    S = _state
    if held is None:
        held = t.lockdep = [[None, S.root, None]]
    elif held[0][1] is not S.root:
        _restart(S, held)  # a stack left from before reset()/enable()
    return held


def _task_name() -> str:
    name = getattr(_rt.current_task(), "name", None)
    return str(name) if name else threading.current_thread().name


def _info(entry: tuple) -> tuple:
    """(class, read, trylock, where) of a held entry."""
    return entry[1][_INFO]


def _held_locks(held: list) -> list[HeldLock]:
    out = []
    for e in held[1:]:
        cls, read, _try, where = e[1][_INFO]
        out.append(HeldLock(cls.name, read, where))
    return out


def _overflow(S: State, what: str, param: str) -> None:
    if S.on:
        S.off_token = object()
        S.on = False
        S.overflow = what
        _sync_on()
        sys.stderr.write(
            f"kvmlock.lockdep: too many {what} (limit {getattr(LIMITS, param)}); lock validation"
            f" is now OFF for the rest of this run. Raise the limit with"
            f" kvmlock.lockdep.configure({param}=...).\n"
        )


def _note(S: State, key: tuple, report: Report, found: list[Report]) -> None:
    """Record a report unless this problem was already reported (caller holds S.lock)."""
    if key not in S.seen:
        S.seen.add(key)
        S.reports.append(report)
        found.append(report)


def _emit(S: State, found: list[Report], may_raise: bool = True) -> None:
    """Tell the user (outside the graph lock): print, raise or stay silent per mode. Where
    raising would leave a real lock in a wrong state (a release), raise mode prints instead."""
    for r in found:
        if S.mode == "warn" or (S.mode == "raise" and not may_raise):
            sys.stderr.write(str(r))
        elif S.mode == "raise":
            raise LockdepError(r)


class _GraphLock:
    """The graph lock, remembering its holder. Code that runs in the middle of validation on
    the same thread (a finalizer run by the garbage collector that takes a lock, say) must not
    wait for the graph lock its own thread holds: that would hang the watched program."""

    __slots__ = ("S",)

    def __init__(self, S: State) -> None:
        self.S = S

    def __enter__(self) -> None:
        self.S.lock.__enter__()
        self.S.owner = _get_ident()

    def __exit__(self, *exc: object) -> None:
        self.S.owner = 0
        self.S.lock.__exit__(*exc)


def _reentered(S: State) -> bool:
    return S.owner == _get_ident()


def _report(S: State, key: tuple, report: Report) -> None:
    found: list[Report] = []
    if _reentered(S):
        _note(S, key, report, found)  # this thread already holds the graph lock
    else:
        with _GraphLock(S):
            _note(S, key, report, found)
    _emit(S, found)


# --------------------------------------------------------------------------- the lock map


class LockMap:
    """The validator's view of one lock instance; its name (or key) names its class.

    Primitives call :meth:`acquire` *before* blocking on the real lock, so an inversion is
    reported before it can hang the program, and :meth:`release` when they let go.
    """

    __slots__ = ("name", "kind", "key", "_cls", "_hid", "_subs", "_off", "__weakref__")

    def __init__(self, name: str, kind: str, key: object | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"LockMap name must be a str, got {type(name).__name__}")
        if not name:
            raise ValueError("LockMap name must not be empty: it names the lock class")
        if kind not in KINDS:
            raise ValueError(f"unknown lock kind {kind!r}; expected one of {sorted(KINDS)}")
        self.name = name
        self.kind = kind
        self.key = name if key is None else key
        try:
            hash(self.key)
        except TypeError:
            raise TypeError(
                f"LockMap key must be hashable (it identifies the lock class), got "
                f"{type(key).__name__}") from None
        self._cls = _klass(self.key, name, kind, 0)
        self._hid = self._cls.hid
        self._subs: list[LockClass | None] | None = None
        self._off: object = None  # the state's off-token when last taken with validation off

    def __repr__(self) -> str:
        return f"<LockMap {self.name} ({self.kind})>"

    def _sub(self, subclass: int) -> LockClass:
        if subclass.__class__ is not int or not 0 <= subclass <= 7:
            raise ValueError(f"lock subclass must be an int in 0..7, got {subclass!r}")
        subs = self._subs
        if subs is None:
            subs = self._subs = [self._cls] + [None] * 7
        cls = subs[subclass]
        if cls is None:
            cls = subs[subclass] = _klass(self.key, self.name, self.kind, subclass)
        return cls

    def acquire(self, subclass: int = 0, read: int = 0, trylock: bool = False) -> None:
        """Validate and record taking this lock (read: 0 exclusive, 1 shared, 2 recursive)."""
        if _ON:
            held = (_TLS if _rt.RT is _THREADS else _rt.current_task()).lockdep
            if subclass or held is None:
                _acquire(self, held, subclass, read, trylock)
                return
            hid = self._hid + read + read + trylock if read or trylock else self._hid
            try:
                node = held[-1][1][hid]
            except KeyError:  # first time this chain is seen (validated outside the handler,
                node = None  # so a report raised from it carries no KeyError context)
            if node is None:
                node = _miss(_state, held, self, self._cls, read, trylock, hid, None)
                if node is None:
                    return
            held.append((self, node))
        else:
            self._off = _state.off_token

    def lock(self) -> None:
        """``acquire()`` for the common case (exclusive, no subclass, not a trylock), with
        fewer branches: the primitives' ``with`` blocks call this one."""
        if _ON:
            held = (_TLS if _rt.RT is _THREADS else _rt.current_task()).lockdep
            try:
                node = held[-1][1][self._hid]
            except (KeyError, TypeError):  # a chain not seen yet, or no stack yet
                node = None
            if node is None:
                self.acquire()
            else:
                held.append((self, node))
        else:
            self._off = _state.off_token

    def release(self) -> None:
        """Record letting go of this lock; releasing one not held is reported."""
        if _ON:
            held = (_TLS if _rt.RT is _THREADS else _rt.current_task()).lockdep
            try:
                if held[-1][0] is self:
                    held.pop()
                    return
            except TypeError:  # no stack yet: this task never took a lock
                pass
            _release_slow(_state, self)

    def acquire_nest(self, nest_lock: LockMap, subclass: int = 0) -> None:
        """mutex_lock_nest_lock(): take this lock exclusively while ``nest_lock`` is held, which
        makes taking many locks of this one class legal in any order (as KVM takes every
        vcpu->mutex under kvm->lock). Without ``nest_lock`` held it is a plain acquire."""
        if not isinstance(nest_lock, LockMap):
            raise TypeError(f"nest_lock must be a LockMap, got {type(nest_lock).__name__}")
        if not _ON:
            self._off = _state.off_token
            return
        S = _state
        held = _stack()
        cls = self._sub(subclass) if subclass else self._cls
        hid = cls.hid + _NEST
        node = held[-1][1].get(hid)
        if node is None:
            node = _miss(S, held, self, cls, 0, False, hid, None, nest=nest_lock)
            if node is None:
                return
        held.append((self, node))

    def sync(self) -> None:
        """synchronize_srcu(): validate an exclusive acquire of this map without holding it."""
        S = _state
        if not S.on:
            return
        held = _stack()
        cls = self._cls
        hid = cls.hid + _SYNC
        if held[-1][1].get(hid) is None:
            _miss(S, held, self, cls, 0, False, hid, None, sync=True)

    def assert_held(self) -> None:
        """lockdep_assert_held(): report "not_held" unless the current task holds this lock."""
        S = _state
        if not S.on:
            return
        held = _stack()
        for e in held:
            if e[0] is self:
                return
        cls = self._cls
        _report(S, ("not_held", cls.name), Report(
            "not_held", lock=cls.name, task=_task_name(), where=user_site(),
            held_locks=_held_locks(held),
        ))

    def is_held(self) -> bool:
        """Whether the current task holds this lock (lockdep_is_held)."""
        return any(e[0] is self for e in _stack())

    def __enter__(self) -> LockMap:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- slow paths


def _acquire(m: LockMap, held: list | None, subclass: int, read: int, trylock: bool) -> None:
    if held is None:
        held = _stack()
    _push(_state, held, m, m._sub(subclass) if subclass else m._cls, read, trylock, None)


def _push(S: State, held: list, m: LockMap, cls: LockClass, read: int, trylock: bool,
          where: str | None, may_raise: bool = True) -> None:
    hid = cls.hid + read + read + trylock
    node = held[-1][1].get(hid)
    if node is None:
        node = _miss(S, held, m, cls, read, trylock, hid, where, may_raise=may_raise)
        if node is None:
            return
    held.append((m, node))


def _miss(
    S: State, held: list, m: LockMap, cls: LockClass, read: int, trylock: bool, hid: int,
    where: str | None, sync: bool = False, may_raise: bool = True,
    nest: LockMap | None = None,
) -> dict | None:
    """First sighting of this chain: validate it under the graph lock and cache it."""
    if read not in (0, 1, 2):
        raise ValueError(f"read must be 0 (exclusive), 1 (shared) or 2 (recursive), got {read!r}")
    if held[0][1] is not S.root:
        _restart(S, held)  # a stack left from before reset()/enable()
    if where is None:
        where = user_site()
    if _reentered(S):  # taken from inside validation on this thread: track it, check nothing
        return {_INFO: (cls, read, trylock, where)}
    found: list[Report] = []
    with _GraphLock(S):
        if not S.on:
            return None
        parent = held[-1][1]
        node = parent.get(hid)
        if node is not None:
            return node
        if cls not in S.classes:
            S.classes[cls] = m.kind
            if len(S.classes) > LIMITS.max_classes:
                _overflow(S, "lock classes", "max_classes")
                return None
        if len(held) > LIMITS.max_depth:
            _overflow(S, "locks held at once (depth)", "max_depth")
            return None
        if not trylock:
            _validate(S, held, m, cls, read, where, found, sync, nest)
        if S.nchains >= LIMITS.max_chains:
            _overflow(S, "lock chains", "max_chains")
            return None
        node = {_INFO: (cls, read, trylock, where)}
        parent[hid] = node
        S.nchains += 1
    _emit(S, found, may_raise)
    return node


def _validate(
    S: State, held: list, m: LockMap, cls: LockClass, read: int, where: str,
    found: list[Report], sync: bool, nest: LockMap | None = None,
) -> None:
    task = _task_name()
    entries = held[1:]
    if sync or m.kind in SLEEPING:
        for e in entries:
            if e[0].kind in SPINNING:
                hcls, hread, _t, _w = _info(e)
                what = f"synchronize({cls.name})" if sync else f"lock({cls.name})"
                _note(S, ("sleep_in_atomic", hcls.name, where), Report(
                    "sleep_in_atomic", lock=cls.name, held=hcls.name, held_read=hread,
                    task=task, where=where, what=what, held_locks=_held_locks(held),
                ), found)
                break
    # Taking a class already held deadlocks on itself, unless both are reads and the new
    # one is a recursive read (rwlock_t readers, SRCU read sides).
    nest_held = False
    for e in entries:
        if nest is not None and e[0] is nest:
            nest_held = True
        hcls, hread, _t, hwhere = _info(e)
        if hcls is cls and not (read == 2 and hread):
            if nest_held:
                return  # serialized by the held nest lock: no deadlock, nothing new to link
            _note(S, ("recursive", cls.name), Report(
                "recursive", lock=cls.name, held=cls.name, lock_read=read, held_read=hread,
                held_where=hwhere, task=task, where=where, held_locks=_held_locks(held),
            ), found)
            return
    # Link from the held locks: the top one, and below it through trylocks (a lock taken
    # normally already linked itself to everything under it).
    for e in reversed(entries):
        hcls, hread, htry, hwhere = _info(e)
        if hcls is not cls:
            _link(S, held, hcls, hread, hwhere, cls, read, where, found, task, sync)
        if not htry:
            break


def _link(
    S: State, held: list, p: LockClass, pr: int, pwhere: str, nxt: LockClass, read: int,
    where: str, found: list[Report], task: str, sync: bool = False,
) -> None:
    after = S.after.get(p)
    link = after.get(nxt) if after else None
    if link is not None and link.dep & dep_bit(pr, read):
        link.sites.setdefault((pr, -1 if sync else read), where)
        return
    path = find_strong_path(S.after, nxt, read == 2, p, pr == 0)
    if path is not None:
        new = Edge(p.name, nxt.name, pr, read, where, sync)
        S.refused.setdefault((p.name, nxt.name, pr, read), new)
        chain = path_edges(path, read == 2) + [new]
        names = frozenset(e.src for e in chain)
        _note(S, ("circular", names), Report(
            "circular", lock=nxt.name, held=p.name, lock_read=read, held_read=pr, task=task,
            where=where, held_where=pwhere, chain=chain, held_locks=_held_locks(held),
        ), found)
        return
    if link is None:
        if S.nedges >= LIMITS.max_edges:
            _overflow(S, "lock dependencies (edges)", "max_edges")
            return
        link = Link(p, nxt)
        S.after.setdefault(p, {})[nxt] = link
        S.nedges += 1
    link.add(pr, read, where, sync)


def _release_slow(S: State, m: LockMap) -> None:
    held = _stack()
    if held[0][1] is not S.root:
        _restart(S, held)
    for i in range(len(held) - 1, 0, -1):
        if held[i][0] is m:
            break
    else:
        if m._off is not None and m._off is S.off_token:
            m._off = None  # taken while validation was off: nothing to match it against
            return
        lax = held[0][2]
        if lax:
            for j, x in enumerate(lax):
                if x is m:
                    del lax[j]
                    return
        cls = m._cls
        _report(S, ("bad_unlock", cls.name), Report(
            "bad_unlock", lock=cls.name, task=_task_name(), where=user_site(),
            held_locks=_held_locks(held),
        ))
        return
    # Out of order: drop it, then take the ones above again so their chains (and the
    # dependencies they imply without the dropped lock) are validated, as the kernel does.
    tail = held[i + 1:]
    del held[i:]
    for e in tail:
        cls, read, trylock, where = _info(e)
        _push(S, held, e[0], cls, read, trylock, where, may_raise=False)


def forget(m: LockMap, held: list) -> bool:
    """Drop ``m`` from another task's stack (a plain lock released by a thread that does not
    hold it, as threading.Lock allows); True when it was there."""
    for i in range(len(held) - 1, 0, -1):
        if held[i][0] is m:
            try:
                del held[i]
            except IndexError:
                return False
            return True
    return False


def _restart(S: State, held: list) -> None:
    """Adopt a stack from an earlier state: its locks will be released later; let that pass."""
    lax = (held[0][2] or []) + [e[0] for e in held[1:]]
    del held[1:]
    held[0] = [None, S.root, lax]


# --------------------------------------------------------------------------- module API


def might_sleep(what: str = "might_sleep") -> None:
    """Report "sleep_in_atomic" when the current task holds a spinning lock."""
    S = _state
    if not S.on:
        return
    held = _stack()
    for e in held[1:]:
        if e[0].kind in SPINNING:
            hcls, hread, _t, _w = _info(e)
            where = user_site()
            _report(S, ("sleep_in_atomic", hcls.name, where), Report(
                "sleep_in_atomic", held=hcls.name, held_read=hread, task=_task_name(),
                where=where, what=what, held_locks=_held_locks(held),
            ))
            return


def task_exit(task_name: str | None = None) -> None:
    """End of a task: report "held_at_exit" for locks still held, then forget the stack."""
    S = _state
    t = _rt.current_task()
    held = t.lockdep
    if held is None:
        return
    if len(held) > 1 and S.on and held[0][1] is S.root:
        names = tuple(_info(e)[0].name for e in held[1:])
        found: list[Report] = []
        with _GraphLock(S):
            _note(S, ("held_at_exit", names), Report(
                "held_at_exit", lock=names[-1], task=task_name or _task_name(),
                held_locks=_held_locks(held),
            ), found)
        if found and S.mode == "warn":  # never raise here: the task is already ending
            sys.stderr.write(str(found[0]))
    del held[1:]
    t.lockdep = None


def held_locks() -> list[HeldLock]:
    """What the current task holds, innermost last (debug_show_held_locks)."""
    return _held_locks(_stack())


def reports() -> list[Report]:
    """Every distinct problem found so far in the current state, oldest first."""
    return list(_state.reports)


def _wipe(root: dict) -> None:
    """Empty a retired chain trie, so stacks still pointing into it miss and restart."""
    todo = [root]
    while todo:
        node = todo.pop()
        for hid in [k for k in node if k >= 0]:
            todo.append(node.pop(hid))


def reset() -> None:
    """Forget everything: classes, dependencies, chains, reports. Locks held now are dropped
    from their stacks (their later release passes silently)."""
    global _state
    old = _state
    _state = State(old.mode)
    _sync_on()
    with _GraphLock(old):
        _wipe(old.root)


def set_mode(mode: str) -> None:
    """"warn": print each problem once; "raise": raise LockdepError; "collect": stay silent."""
    if mode not in MODES:
        raise ValueError(f"lockdep mode must be one of {MODES}, got {mode!r}")
    _state.mode = mode


def get_mode() -> str:
    """The current mode: "warn", "raise" or "collect"."""
    return _state.mode


def enable() -> None:
    """Switch validation back on (held stacks restart empty)."""
    S = _state
    if not S.on:
        with _GraphLock(S):  # stacks from before are restarted on their next miss
            old, S.root, S.nchains = S.root, {}, 0
            _wipe(old)
        S.on = True
        S.overflow = None
        _sync_on()


def disable() -> None:
    """Switch validation off: lock operations cost one flag test."""
    if _state.on:
        _state.off_token = object()
        _state.on = False
        _sync_on()


def enabled() -> bool:
    """Whether validation is on (off after disable() or a table overflow)."""
    return _state.on


def configure(**limits: int) -> dict[str, int]:
    """Set table limits (max_classes, max_edges, max_chains, max_depth); returns them all."""
    for name, value in limits.items():
        if name not in Limits.__slots__:
            raise ValueError(f"unknown lockdep limit {name!r}; known: {list(Limits.__slots__)}")
        if value.__class__ is not int or value < 1:
            raise ValueError(f"lockdep limit {name} must be a positive int, got {value!r}")
    for name, value in limits.items():
        setattr(LIMITS, name, value)
    return LIMITS.as_dict()


def stats() -> dict[str, Any]:
    """Sizes of the tables: how much validation work a run created."""
    S = _state
    return {"classes": len(S.classes), "edges": S.nedges, "chains": S.nchains,
            "reports": len(S.reports), "enabled": S.on}


def graph() -> DepGraph:
    """A snapshot of the dependency graph (one Edge per recorded kind of each link)."""
    S = _state
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        g = DepGraph({c.name: kind for c, kind in S.classes.items()})
        for c, links in list(S.after.items()):
            for link in list(links.values()):
                for (sr, dr), where in list(link.sites.items()):
                    g.edges.append(Edge(c.name, link.dst.name, sr, max(dr, 0), where, dr < 0))
        g.refused = list(S.refused.values())
    return g


def chains() -> list[tuple[HeldLock, ...]]:
    """Every distinct chain of held locks validated so far (outermost first): which locks
    were held together when each lock was taken. synchronize() checks are not chains."""
    S = _state
    out: list[tuple[HeldLock, ...]] = []
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        todo: list[tuple[dict, tuple[HeldLock, ...]]] = [(S.root, ())]
        while todo:
            node, trail = todo.pop()
            for hid, child in list(node.items()):
                if hid < 0 or hid % 8 == _SYNC:
                    continue
                cls, read, _trylock, where = child[_INFO]
                step = (*trail, HeldLock(cls.name, read, where))
                out.append(step)
                todo.append((child, step))
    return out


@contextmanager
def isolated(mode: str = "collect") -> Iterator[State]:
    """A fresh private lockdep state for the block (graph, chains, reports), then the old one.

    The explorer runs each execution inside one so executions cannot see each other's
    dependencies; read :func:`reports` before leaving. The current task's held stack is set
    aside too. Not meant for use while other OS threads are validating locks.
    """
    global _state
    if mode not in MODES:
        raise ValueError(f"lockdep mode must be one of {MODES}, got {mode!r}")
    prev = _state
    t = _rt.current_task()
    saved = t.lockdep
    t.lockdep = None
    _state = st = State(mode)
    _sync_on()
    try:
        yield st
    finally:
        _state = prev
        _sync_on()
        t.lockdep = saved
