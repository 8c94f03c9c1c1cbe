"""The hot path: LockMap (what primitives call) and the per-task held-lock stacks.

A held-lock stack entry carries the chain-cache node of the chain it ends, and the
cache is a trie keyed by (class, read, trylock) ids, so an acquire whose chain was seen before
is one dict lookup plus a list append, with no lock taken: the first time a chain is seen
(a miss) it is validated under the graph lock and added to the trie. Releasing the most recent
lock is a compare and a pop. Validation lives in validate.py, the module API in api.py.
"""

from __future__ import annotations

import _thread
import os
import sys

from kvmlock import runtime as _rt
from kvmlock.lockdep.graph import LockClass
from kvmlock.lockdep.report import Report
from kvmlock.lockdep.state import (  # noqa: F401 - _SYNC and _INFO are read by kvmlock.spec
    _INFO,
    _NEST,
    _OFF,
    _SYNC,
    IRQ_MARK,
    KINDS,
    MAX_SUBCLASSES,
    OFF_CHANGED,
    LockdepError,
    State,
    _held_locks,
    _info,
    _klass,
    _report,
    _task_name,
    check_subclass,
    task_irq,
)
from kvmlock.lockdep.validate import _miss, _restart, settle
from kvmlock.lockdep.where import NOWHERE, user_site
from kvmlock.lockdep.where import taken_here as _taken_here

# The state of the world in force: the world object carries it (see kvmlock.runtime).
_rt.THREADS_WORLD.lockdep = State()
_world = _rt.world
_TLS = _rt.THREADS._tls
_get_ident = _thread.get_ident
_getframe = sys._getframe
#: thread ident -> that OS thread's held stack, for the threads that ever took a lock: a thread
#: still running when the process ends is checked for locks held (api.check_live_threads).
LIVE: dict[int, list] = {}


def _state() -> State:
    """lockdep's state in the world in force."""
    return _world().lockdep


# A task's held-lock stack is a plain list (the fastest container to index and append to):
# element 0 is a header ``[None, root of the state's chain trie, locks to release quietly]``,
# then one ``(map, node)`` per held lock, where ``node`` is the chain-cache node of the chain
# ending with that lock. A node's ``_INFO`` entry says what the lock is: ``(class, read,
# trylock, first-seen-where)``. Where the task's interrupt state changed (kvmlock.irq) the
# stack holds a mark ``(IRQ_MARK, node)`` instead, whose node is the chain's child for that
# state: chains taken in different states are different chains, found by the same lookup.
# When the trie is replaced (reset, enable) the old one is emptied, so a stack from before
# misses on its next acquire and is restarted there.
# The task object is the runtime's ``current`` (an explored task), or else the calling
# thread's thread-local, read directly (a call to runtime.current_task() costs as much again).
# While validation is off the trie is a sink (state._Sink): the cached path never tests it.


def _stack(S: State | None = None) -> list:
    """The current task's held stack (created on first use and registered with the state)."""
    w = _world()
    t = w.rt.current or _TLS
    held = t.lockdep
    if S is None:
        S = w.lockdep
    if held is None:
        held = t.lockdep = [[None, S.root, None]]
        if t is _TLS:
            LIVE[_get_ident()] = held
        state = task_irq(t)
        if state:
            settle(S, held, state)
    elif held[0][1] is not S.root:
        _restart(S, held)  # a stack left from before reset()/enable(), or another world's
    return held


def irq_changed(old: int, new: int) -> None:
    """The current task's interrupt state went from ``old`` to ``new``: mark its held stack
    so what it takes from here is validated (and cached) as taken in that state. The usual
    pair -- interrupts off, then back as they were -- is a lookup and an append, then a pop."""
    w = _world()
    S = w.lockdep
    if not S.on:
        return
    held = (w.rt.current or _TLS).lockdep
    if held is None or held[0][1] is not S.root:
        _stack(S)  # made or restarted here, already marked with the task's state
        return
    top = held[-1]
    if top[0] is IRQ_MARK:
        held.pop()  # a mark on top is replaced, not stacked
        old = top[2]
        top = held[-1]
    if new == old:
        return
    node = top[1].get(-2 - new)
    if node is None:
        settle(S, held, new)  # first time this chain changes to this state: validate
        return
    held.append((IRQ_MARK, node, old))


#: (name, kind, key) of the maps made so far -> their class (see LockMap.__init__)
_MADE: dict[tuple[str, str, object], LockClass] = {}


class LockMap:
    """The validator's view of one lock instance; its name (or key) names its class.

    Primitives call :meth:`acquire` *before* blocking on the real lock, so an inversion is
    reported before it can hang the program, and :meth:`release` when they let go.
    """

    __slots__ = ("name", "kind", "key", "_cls", "_hid", "_subs", "_off", "__weakref__")

    def __init__(self, name: str, kind: str, key: object | None = None) -> None:
        # A model builds dozens of maps per execution, nearly all of a (name, kind, key) seen
        # before: those were checked then, and their class is found in one lookup.
        k = name if key is None else key
        try:
            cls = _MADE[name, kind, k]
        except (KeyError, TypeError):  # (TypeError: an unhashable key, reported below)
            pass
        else:
            self.name = name
            self.kind = kind
            self.key = k
            self._cls = cls
            self._hid = cls.hid
            self._subs = None
            self._off = None
            return
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
        if len(_MADE) < 1 << 16:
            _MADE[name, kind, self.key] = self._cls
        self._subs: list[LockClass | None] | None = None
        self._off: object = None  # the state's off-token when last taken with validation off

    def __repr__(self) -> str:
        return f"<LockMap {self.name} ({self.kind})>"

    def _sub(self, subclass: int) -> LockClass:
        check_subclass(subclass)
        subs = self._subs
        if subs is None:
            subs = self._subs = [self._cls] + [None] * (MAX_SUBCLASSES - 1)
        cls = subs[subclass]
        if cls is None:
            cls = subs[subclass] = _klass(self.key, self.name, self.kind, subclass)
        return cls

    def acquire(self, subclass: int = 0, read: int = 0, trylock: bool = False,
                at: tuple | None = None) -> None:
        """Validate and record taking this lock (read: 0 exclusive, 1 shared, 2 recursive).
        ``at``: where the user takes it, when the caller found that already (see
        where.taken_here)."""
        w = _world()
        held = (w.rt.current or _TLS).lockdep
        if subclass:
            _acquire(self, w.lockdep, subclass, read, trylock, at)
            return
        if held is None:  # the task's first lock: its stack starts here
            S = w.lockdep
            if not S.on:
                self._off = S.off_token
                return
            held = _stack(S)
        hid = self._hid + read + read + trylock if read or trylock else self._hid
        try:
            node = held[-1][1][hid]
        except KeyError:  # first time this chain is seen (validated outside the handler,
            node = None  # so a report raised from it carries no KeyError context)
        if node is None:
            S = w.lockdep
            if not S.on:  # a stack from before the switch: restart it on the sink
                self._off = S.off_token
                held = _stack(S)
                held.append((self, S.root))
                return
            node = _miss(S, held, self, self._cls, read, trylock, hid, None)
            if node is None:
                return
        code, lasti = _taken_here() if at is None else at
        held.append((self, node, code, lasti))

    def lock(self) -> None:
        """``acquire()`` for the common case (exclusive, no subclass, not a trylock), with
        fewer branches: the primitives' ``with`` blocks call this one."""
        held = (_world().rt.current or _TLS).lockdep
        try:
            node = held[-1][1][self._hid]
        except KeyError:  # a chain not seen yet
            node = None
        except TypeError:  # the task's first lock: its stack starts here, and the chain
            S = _world().lockdep  # may be cached already (another task of this world's)
            if not S.on:
                self.acquire()
                return
            held = _stack(S)
            node = held[-1][1].get(self._hid)
        if node is None:
            self.acquire()
            return
        # where it is taken (see where.taken_here), as cheaply as can be: the caller of the
        # primitive calling this, two frames up
        try:
            f = _getframe(2)
        except ValueError:  # called from the bottom of the stack
            held.append((self, node, None, -1))
            return
        held.append((self, node, f, f.f_lasti))

    def release(self) -> None:
        """Record letting go of this lock; releasing one not held is reported."""
        w = _world()
        held = (w.rt.current or _TLS).lockdep
        try:
            if held[-1][0] is self:
                held.pop()
                return
        except TypeError:  # no stack yet: this task never took a lock
            pass
        _release_slow(w.lockdep, self)

    # While some state has validation off (state._OFF), lock/release are these: a look at
    # the state first, so that a with-block there skips the bookkeeping.
    _lock_fast = lock
    _release_fast = release

    def _lock_checked(self) -> None:
        S = _world().lockdep
        if S.on:  # (lock() finds its taker by depth: this frame would be in the way)
            self.acquire(at=_taken_here())
        else:
            self._off = S.off_token

    def _release_checked(self) -> None:
        w = _world()
        S = w.lockdep
        if S.on:
            self._release_fast()
            return
        held = (w.rt.current or _TLS).lockdep
        if held is not None and len(held) > 1:  # taken before validation went off
            _release_slow(S, self)

    def acquire_nest(self, nest_lock: LockMap, subclass: int = 0) -> None:
        """mutex_lock_nest_lock(): take this lock exclusively while ``nest_lock`` is held, which
        makes taking many locks of this one class legal in any order (as KVM takes every
        vcpu->mutex under kvm->lock). Without ``nest_lock`` held it is a plain acquire."""
        if not isinstance(nest_lock, LockMap):
            raise TypeError(f"nest_lock must be a LockMap, got {type(nest_lock).__name__}")
        S = _state()
        if not S.on:
            self._off = S.off_token
            return
        held = _stack(S)
        cls = self._sub(subclass) if subclass else self._cls
        hid = cls.hid + _NEST
        node = held[-1][1].get(hid)
        if node is None:
            node = _miss(S, held, self, cls, 0, False, hid, None, nest=nest_lock)
            if node is None:
                return
        held.append((self, node, *_taken_here()))

    def sync(self) -> None:
        """synchronize_srcu(): validate an exclusive acquire of this map without holding it."""
        S = _state()
        if not S.on:
            return
        held = _stack(S)
        cls = self._cls
        hid = cls.hid + _SYNC
        if held[-1][1].get(hid) is None:
            _miss(S, held, self, cls, 0, False, hid, None, sync=True)

    def assert_held(self) -> None:
        """lockdep_assert_held(): report "not_held" unless the current task holds this lock."""
        S = _state()
        if not S.on:
            return
        held = _stack(S)
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


def _acquire(m: LockMap, S: State, subclass: int, read: int, trylock: bool,
             at: tuple | None = None) -> None:
    cls = m._sub(subclass) if subclass else m._cls  # a bad subclass is an error even when off
    if not S.on:
        m._off = S.off_token
        return
    _push(S, _stack(S), m, cls, read, trylock, None, _taken_here() if at is None else at)


def _push(S: State, held: list, m: LockMap, cls: LockClass, read: int, trylock: bool,
          where: str | None, at: tuple, may_raise: bool = True) -> None:
    hid = cls.hid + read + read + trylock
    node = held[-1][1].get(hid)
    if node is None:
        node = _miss(S, held, m, cls, read, trylock, hid, where, may_raise=may_raise)
        if node is None:
            return
    held.append((m, node, *at))


def _release_slow(S: State, m: LockMap) -> None:
    if not S.on:  # out of order, or taken before the switch: drop it quietly
        held = _stack(S)
        for i in range(len(held) - 1, 0, -1):
            if held[i][0] is m:
                del held[i]
                break
        return
    held = _stack(S)  # restarted already if left from an earlier state
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
        if e[0] is IRQ_MARK:
            settle(S, held, read, where)  # a mark's info carries its state where read is
        else:
            _push(S, held, e[0], cls, read, trylock, where, e[2:4] if len(e) > 3 else NOWHERE,
                  may_raise=False)


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


def _after_fork_in_child() -> None:
    """Only the forking thread lives on in a child process: a graph or class-table lock that
    another thread held at the fork would never be released there, so start them afresh."""
    from kvmlock.lockdep import naming, state

    S = _rt.THREADS_WORLD.lockdep
    S.lock._at_fork_reinit()
    S.owner = 0
    state._CLASSES_LOCK._at_fork_reinit()
    naming._names_lock._at_fork_reinit()


def _off_changed() -> None:
    """Some state's validation went off, or the last one came back on (see LockMap.lock)."""
    if _OFF:
        LockMap.lock, LockMap.release = LockMap._lock_checked, LockMap._release_checked
    else:
        LockMap.lock, LockMap.release = LockMap._lock_fast, LockMap._release_fast


OFF_CHANGED.append(_off_changed)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
