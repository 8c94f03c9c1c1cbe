"""Lockdep's shared state: limits, the per-world State, lock classes, recording reports.

A ``State`` is one world's worth of knowledge (graph, chain cache, reports, mode); the explorer
gives each execution its own. Lock classes are global: a name is the same class everywhere.
"""

from __future__ import annotations

import _thread
import sys
import threading
import weakref
from typing import Any

from kvmlock import runtime as _rt
from kvmlock.lockdep.graph import Link, LockClass
from kvmlock.lockdep.report import Edge, HeldLock, ProtectedData, Report
from kvmlock.lockdep.where import taken_at

KINDS = frozenset(
    {"mutex", "spinlock", "raw_spinlock", "rwlock", "rwsem", "percpu_rwsem", "srcu", "pseudo",
     "rcu", "threading"}
)
#: The RCU read side's kind: never waits, nothing inside it may sleep, and (as the kernel
#: acquires it without checks) it gathers no interrupt usage.
RCU = "rcu"
#: Locks that spin: holding one, a task must not sleep (rwlock_t is a spinning lock too).
SPINNING = frozenset({"spinlock", "raw_spinlock", "rwlock"})
#: Locks whose (blocking) acquire may sleep.
SLEEPING = frozenset({"mutex", "rwsem", "percpu_rwsem"})
#: raw_nesting: check wait types (lockdep/usage.py), as CONFIG_PROVE_RAW_LOCK_NESTING does
OPTIONS = {"raw_nesting": False}
MODES = ("warn", "raise", "collect")
#: lockdep keeps 8 subclasses per class, as the kernel does (MAX_LOCKDEP_SUBCLASSES).
MAX_SUBCLASSES = 8


def check_subclass(subclass: object) -> int:
    """A nesting subclass is an int in 0..MAX_SUBCLASSES-1 (an IntEnum member too; a bool
    is not one)."""
    if not isinstance(subclass, int) or isinstance(subclass, bool) or not (
            0 <= subclass < MAX_SUBCLASSES):
        raise ValueError(
            f"lock subclass must be an integer in 0..{MAX_SUBCLASSES - 1}, got {subclass!r}"
        )
    return subclass


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
        self.max_depth = 1024  # the kernel's 48 is too few: wait() on 60 futures holds 60

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
        self.protected: dict[tuple[str, str, str], ProtectedData] = {}  # (kind, name, lock)
        self.seen: set[tuple] = set()
        self.overflow: str | None = None
        self.inst: dict[int, Any] = {}  # instance-level orders (see instances.py)
        self.off_token: object = None  # new object each time validation is switched off
        self.before: dict[LockClass, dict[LockClass, Link]] = {}  # the graph, reversed
        self.usage: dict[LockClass, int] = {}  # irq usage bits per class (lockdep/usage.py)
        self.usage_where: dict[tuple[LockClass, int], str] = {}  # where each bit was first set
        # The exploration's chain memory (lockdep/memo.py), if any: trie node id -> (node,
        # memo entry), and the union state's own flags.
        self.memo: Any = None
        self.memo_at: dict[int, tuple[dict, Any]] = {}
        self.shadow = False  # the union state of a memo: its reports reach no one
        self.record: list | None = None  # effects of the validation under way (memo)


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


_INFO = -1  # a chain node's (class, read, trylock, where); real keys are >= 0
_SYNC = 6  # low bits of the chain-node key of a synchronize()
_NEST = 7  # low bits of the chain-node key of an acquire under a nest lock
_get_ident = _thread.get_ident


def _task_name() -> str:
    name = getattr(_rt.current_task(), "name", None)
    return str(name) if name else threading.current_thread().name


def _info(entry: tuple) -> tuple:
    """(class, read, trylock, where) of a held entry."""
    return entry[1][_INFO]


class _IrqMark:
    """What a held stack holds where the task's interrupt state changed (see core.py): the
    entry is ``(IRQ_MARK, node, state before)``, the node's info ``(None, state, False,
    where)`` and its key in the parent ``-2 - state``."""

    __slots__ = ()
    kind = "irq"
    name = "<irq state>"

    def __repr__(self) -> str:
        return "<irq state mark>"


IRQ_MARK = _IrqMark()


#: A task's ``irq`` attribute holds its interrupt state in these bits (kvmlock.irq keeps the
#: bottom-half disable depth above them).
IRQ_BITS = 0xFF


def task_irq(t: object) -> int:
    """The interrupt state of task object ``t`` (0: process context, all enabled)."""
    return getattr(t, "irq", 0) & IRQ_BITS


def mark_key(state: int) -> int:
    """The chain-trie key of the mark for interrupt state ``state`` (never a lock's key)."""
    return -2 - state


def _lock_entries(held: list) -> list[tuple]:
    """The held locks of a stack, outermost first, without its interrupt-state marks."""
    return [e for e in held[1:] if e[0] is not IRQ_MARK]


def _held_state(held: list) -> int:
    """The interrupt state a held stack's chain was validated in (its last mark, else 0)."""
    for i in range(len(held) - 1, 0, -1):
        e = held[i]
        if e[0] is IRQ_MARK:
            return e[1][_INFO][1]
    return 0


def _at(e: tuple) -> str:
    """Where the held lock of entry ``e`` was taken: its own acquisition site, recorded by
    every acquire (where.taken_here), else where its chain was first seen."""
    at = taken_at(e[2], e[3]) if len(e) > 3 else None
    return at if at is not None else str(e[1][_INFO][3])


#: Keys of plain ``threading.Lock`` classes seen released by a thread that did not take them:
#: locks handed between threads, signals. Nobody owns one, so a thread may end with one locked
#: for another thread to release: that is no ``held_at_exit``.
SIGNAL_CLASSES: set = set()


def _owned(entries: list[tuple]) -> list[tuple]:
    """The held entries a task ending now would leave locked for good (not signals)."""
    return [e for e in entries if e[0].key not in SIGNAL_CLASSES]


def _held_locks(held: list) -> list[HeldLock]:
    out = []
    for e in _lock_entries(held):
        cls, read, _try, _where = e[1][_INFO]
        out.append(HeldLock(cls.name, read, _at(e)))
    return out


def _wipe(root: dict) -> None:
    """Empty a retired chain trie, so stacks still pointing into it miss and restart."""
    if isinstance(root, _Sink):
        root.live = False
        root.clear()
        return
    todo = [root]
    while todo:
        node = todo.pop()
        for hid in [k for k in node if k != _INFO]:  # locks' keys and interrupt marks'
            todo.append(node.pop(hid))


class _Sink(dict):
    """The chain trie while validation is off: every chain is "seen", and leads back here.

    The cached path never tests the on-flag; with this root every acquire hits, pushes a
    no-op entry and is popped by its release, so switching off costs nothing per operation.
    """

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live = True  # until retired: then every lookup misses, like a wiped trie

    def __missing__(self, key: int) -> _Sink:
        if self.live:
            self[key] = self  # the next lookup of this key is a plain dict hit
            return self
        raise KeyError(key)


#: States whose validation is off, by id. While there is one, LockMap's hot path looks at the
#: state first, so that an acquire there costs next to nothing; while there is none it tests
#: no flag (core.py rebinds the methods through OFF_CHANGED).
_OFF: dict[int, Any] = {}
OFF_CHANGED: list[Any] = []


def _off_changed() -> None:
    for hook in OFF_CHANGED:
        hook()


def mark_off(S: State, off: bool) -> None:
    """Record that validation in ``S`` went off (or back on); a state that goes away off is
    forgotten with it."""
    k = id(S)
    if off and k not in _OFF:
        def gone(ref: Any, k: int = k) -> None:
            if _OFF.get(k) is ref and not sys.is_finalizing():  # (modules go away then)
                del _OFF[k]
                _off_changed()

        _OFF[k] = weakref.ref(S, gone)
        _off_changed()
    elif not off and _OFF.pop(k, None) is not None:
        _off_changed()


def switch_off(S: State) -> None:
    """Validation off (caller holds the graph lock): the chain cache becomes a sink, so stacks
    from before restart on their next miss and new acquires are no-ops."""
    S.off_token = object()
    S.on = False
    old, S.root, S.nchains = S.root, _Sink(), 0
    _wipe(old)
    if not S.shadow:
        mark_off(S, True)


def _overflow(S: State, what: str, param: str) -> None:
    if S.on and S.shadow:
        switch_off(S)  # a memo's union: the memo stops, nobody is told
    elif S.on:
        switch_off(S)
        S.overflow = what
        sys.stderr.write(
            f"kvmlock.lockdep: too many {what} (limit {getattr(LIMITS, param)}); lock validation"
            f" is now OFF for the rest of this run. Raise the limit with"
            f" kvmlock.lockdep.configure({param}=...).\n"
        )
        note_gap(f"validation was switched off: too many {what} (limit "
                 f"{getattr(LIMITS, param)})")


def _note(S: State, key: tuple, report: Report, found: list[Report]) -> None:
    """Record a report unless this problem was already reported (caller holds S.lock)."""
    if key not in S.seen:
        S.seen.add(key)
        if S.shadow:
            found.append(report)
            return
        from kvmlock.lockdep.usage import annotate

        annotate(S, report)
        S.reports.append(report)
        found.append(report)
        _tell(REPORT_HOOKS, report)


#: What lockdep could not validate in this process, each said once. A run with any is not a
#: clean run: ``kvmlock lockdep`` and ``pytest --lockdep`` call their verdict incomplete.
GAPS: list[str] = []
#: Called with every new gap as it is noted (``kvmlock lockdep`` journals them, so a forked
#: child's gaps reach the summary too).
GAP_HOOKS: list = []


def note_gap(what: str) -> None:
    """Record that something the program did was not validated (``what`` says what)."""
    if what in GAPS:
        return
    GAPS.append(what)
    _tell(GAP_HOOKS, what)


def _tell(hooks: list, what: Any) -> None:
    for hook in hooks:
        try:
            hook(what)
        except Exception:  # noqa: BLE001 - a sink failing must not break the program
            pass


#: Called with every new report as it is recorded (``kvmlock lockdep`` journals them there,
#: so a process that ends by ``os._exit`` loses none).
REPORT_HOOKS: list = []


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
