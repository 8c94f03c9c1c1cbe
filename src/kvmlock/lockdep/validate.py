"""The slow path: validating a chain of held locks the first time it is seen.

Runs under the graph lock. Checks, in the kernel's order: sleeping under a spinning lock, the
same class taken twice (AA), then the new dependencies from the held locks -- each one a
breadth-first search for a strong cycle it would close.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from kvmlock import runtime as _rt
from kvmlock.lockdep import memo
from kvmlock.lockdep import usage as U
from kvmlock.lockdep.graph import Link, LockClass, dep_bit, find_cycle_path, path_edges
from kvmlock.lockdep.instances import instance_order
from kvmlock.lockdep.report import Edge, Report
from kvmlock.lockdep.state import (
    _INFO,
    IRQ_MARK,
    LIMITS,
    OPTIONS,
    RCU,
    SLEEPING,
    SPINNING,
    State,
    _at,
    _emit,
    _GraphLock,
    _held_locks,
    _held_state,
    _info,
    _note,
    _overflow,
    _reentered,
    _task_name,
    mark_key,
    task_irq,
)
from kvmlock.lockdep.where import site, user_site, user_stack

if TYPE_CHECKING:
    from kvmlock.lockdep.core import LockMap


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
        where = site()
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
        mem = S.memo
        if mem is not None and mem.clean and nest is None:
            node = _remembered(S, held, m, cls, read, trylock, hid, where, parent)
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
        by_instance = _check(S, held, m, cls, read, trylock, where, found, sync, nest)
        if not S.on:
            return None  # a table overflowed while validating
        node = {_INFO: (cls, read, trylock, where)}
        if not by_instance:  # (instance-level chains are checked every time: not cached)
            if S.nchains >= LIMITS.max_chains:
                _overflow(S, "lock chains", "max_chains")
                return None
            parent[hid] = node
            S.nchains += 1
        if mem is not None and mem.clean:
            _learn(S, held, m, cls, read, trylock, hid, where, sync, nest, parent,
                   None if by_instance else node)
    _emit(S, found, may_raise)
    return node


def wakes(S: State, held: list, m: LockMap, entries: list[tuple]) -> None:
    """``m`` (an event) is being set by a task that holds ``entries`` (of its stack ``held``):
    whoever waits for ``m`` also waits for each of those locks, which the setter needed to get
    this far. So each is a dependency ``m -> lock``, validated as every new dependency is: a
    waiter that holds one of them while it waits closes a cycle."""
    if not entries:
        return
    where = user_site()
    found: list[Report] = []
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        if not S.on:
            return
        cls = m._cls
        S.classes.setdefault(cls, m.kind)
        _event_links(S, held, cls, entries, where, found)
        mem = S.memo
        if mem is not None and mem.clean:  # the memo's union must have every dependency too
            union, seen = mem.union, []
            union.classes.setdefault(cls, m.kind)
            _event_links(union, held, cls, entries, where, seen)
            if seen or not union.on:
                mem.clean = False
    _emit(S, found)


def _event_links(S: State, held: list, cls: LockClass, entries: list[tuple], where: str,
                 found: list[Report]) -> None:
    for e in entries:
        hcls, hread, _t, _w = _info(e)
        if hcls is not cls:
            _link(S, held, cls, 0, where, hcls, hread, where, found, what=(
                f"({cls.name}) is an event this task is setting while it holds "
                f"({hcls.name}): whoever waits for the event waits for that lock too."))


def _check(S: State, held: list, m: LockMap, cls: LockClass, read: int, trylock: bool,
           where: Any, found: list[Report], sync: bool, nest: LockMap | None) -> bool:
    """Validate taking ``m`` in ``S``; True when the chain must not be cached (see
    :func:`_validate`)."""
    if not trylock:
        return _validate(S, held, m, cls, read, where, found, sync, nest)
    U.mark_acquire(S, held, cls, read, True, False, _held_state(held), where, found)
    return m.kind == "threading" and any(_info(e)[0] is cls for e in held[1:])


def _remembered(S: State, held: list, m: LockMap, cls: LockClass, read: int, trylock: bool,
                hid: int, where: Any, parent: dict) -> dict | None:
    """The exploration already validated this chain: apply what that did (lockdep/memo.py)."""
    at = memo.entry_at(S, parent)
    entry = at.children.get(hid) if at is not None else None
    if entry is None or entry.kinds != memo.kinds_of(held, m):
        return None
    node = memo.apply(S, held, m, cls, read, trylock, hid, where, entry)
    if node is not None:
        S.memo.hits += 1
    return node


def _learn(S: State, held: list, m: LockMap, cls: LockClass, read: int, trylock: bool,
           hid: int, where: Any, sync: bool, nest: LockMap | None, parent: dict,
           node: dict | None) -> None:
    """Validate the chain just validated in ``S`` in the memo's union state too, recording
    its effects; remember it unless that found a problem (which turns the memo off)."""
    mem = S.memo
    mem.misses += 1
    union = mem.union
    found: list[Report] = []
    if cls not in union.classes:
        union.classes[cls] = m.kind
    union.record = effects = []
    try:
        _check(union, held, m, cls, read, trylock, where, found, sync, nest)
    finally:
        union.record = None
    if found or not union.on:
        mem.clean = False
        return
    if node is None or nest is not None:
        return  # checked instance by instance: validated each time, never remembered
    at = memo.entry_at(S, parent)
    if at is None:
        return
    entry = at.children.get(hid)
    if entry is None:
        entry = at.children[hid] = memo.Entry(memo.kinds_of(held, m), effects)
    S.memo_at[id(node)] = (node, entry)


def _contexts(held: list) -> list[tuple[tuple, int]]:
    """Each held lock with the interrupt state it was taken in, outermost first."""
    out = []
    state = 0
    for e in held[1:]:
        if e[0] is IRQ_MARK:
            state = e[1][_INFO][1]
        else:
            out.append((e, state))
    return out


def _validate(
    S: State, held: list, m: LockMap, cls: LockClass, read: int, where: str,
    found: list[Report], sync: bool, nest: LockMap | None = None,
) -> bool:
    """Validate taking ``m``; True when the chain was checked instance by instance (a plain
    threading lock nested under another lock of its class), so it must not be cached."""
    state = _held_state(held)
    entries = _contexts(held)
    # Usage first, as the kernel marks it before validating the chain: a handler that takes a
    # lock its CPU holds is an inconsistent lock state before it is a recursive acquire.
    U.mark_acquire(S, held, cls, read, False, sync, state, where, found)
    if sync or m.kind in SLEEPING:
        _check_sleep(S, held, entries, state, cls.name,
                     f"synchronize({cls.name})" if sync else f"lock({cls.name})", where, found)
    if OPTIONS["raw_nesting"] and not sync:
        _check_wait_context(S, held, entries, state, m, cls, read, where, found)
    # Taking a class already held deadlocks on itself, unless both are reads and the new
    # one is a recursive read (rwlock_t readers, SRCU read sides).
    # Plain threading locks of one class (one creation site) are told apart: nesting two
    # different instances is an instance-level order, checked like a class-level one.
    nest_held = False
    same: list = []
    for e, _st in entries:
        if nest is not None and e[0] is nest:
            nest_held = True
        hcls, hread, _t, hwhere = _info(e)
        if hcls is cls and not (read == 2 and hread):
            if nest_held:
                return False  # serialized by the held nest lock: no deadlock, nothing to link
            if m.kind == "threading" and e[0] is not m:
                same.append(e)
                continue
            _note(S, ("recursive", cls.name), Report(
                "recursive", lock=cls.name, held=cls.name, lock_read=read, held_read=hread,
                held_where=_at(e), task=_task_name(), where=where, held_locks=_held_locks(held),
            ), found)
            return m.kind == "threading"
    if same:
        instance_order(S, held, same, m, read, where, found)
    # Link from the held locks: the top one, and below it through trylocks (a lock taken
    # normally already linked itself to everything under it). An interrupt handler's locks
    # do not depend on those of the code it interrupted: the chain stops at the context change.
    ctx = state & U.CONTEXT
    for e, st in reversed(entries):
        if st & U.CONTEXT != ctx:
            break
        hcls, hread, htry, _hwhere = _info(e)
        if hcls is not cls:
            _link(S, held, hcls, hread, _at(e), cls, read, where, found, sync, state)
        if not htry:
            break
    return bool(same)


def _check_sleep(S: State, held: list, entries: list, state: int, name: str | None, what: str,
                 where: str, found: list[Report]) -> None:
    """Sleeping under a spinning lock, in an RCU read-side critical section, or in a context
    that may not sleep."""
    in_rcu = False
    for e, _st in entries:
        if e[0].kind in SPINNING:
            hcls, hread, _t, _w = _info(e)
            _note(S, ("sleep_in_atomic", hcls.name, where), Report(
                "sleep_in_atomic", lock=name, held=hcls.name, held_read=hread,
                task=_task_name(), where=where, what=what, held_locks=_held_locks(held),
            ), found)
            return
        in_rcu = in_rcu or e[0].kind == RCU
    if state & U.ATOMIC or in_rcu:
        context = U.describe_state(state) if state & U.ATOMIC else \
            "an RCU read-side critical section"
        _note(S, ("sleep_in_atomic", context, where), Report(
            "sleep_in_atomic", lock=name, task=_task_name(), where=where, what=what,
            context=context, irq_state=U.state_flags(state), held_locks=_held_locks(held),
        ), found)


def _check_wait_context(S: State, held: list, entries: list, state: int, m: LockMap,
                        cls: LockClass, read: int, where: str, found: list[Report]) -> None:
    """PREEMPT_RT's rule: nothing may wait longer than the locks held in its context (and
    a hard-IRQ handler) allow -- a spinlock_t sleeps there, a raw spinlock never does."""
    outer, inner = U.wait_types(m.kind)
    if not inner:
        return
    ctx = state & U.CONTEXT
    limit = U.context_wait(state)
    worst = None
    for e, st in entries:
        if st & U.CONTEXT != ctx:
            continue
        w = U.wait_types(e[0].kind)[1]
        if w and w < limit:
            limit, worst = w, e
    if outer <= limit:
        return
    if worst is None:
        _note(S, ("wait_context", U.describe_state(state), cls.name), Report(
            "wait_context", lock=cls.name, lock_read=read, task=_task_name(), where=where,
            context=U.describe_state(state), irq_state=U.state_flags(state),
            held_locks=_held_locks(held),
        ), found)
        return
    hcls, hread, _t, _w = _info(worst)
    _note(S, ("wait_context", hcls.name, cls.name), Report(
        "wait_context", lock=cls.name, held=hcls.name, held_read=hread,
        lock_read=read, task=_task_name(), where=where, held_locks=_held_locks(held),
    ), found)


def _link(
    S: State, held: list, p: LockClass, pr: int, pwhere: str, nxt: LockClass, read: int,
    where: str, found: list[Report], sync: bool = False, state: int = 0, what: str = "",
) -> None:
    if S.record is not None:
        S.record.append((p, pr, nxt, read, sync))
    after = S.after.get(p)
    link = after.get(nxt) if after else None
    if link is not None and link.dep & dep_bit(pr, read):
        link.sites.setdefault((pr, -1 if sync else read), where)
        return
    path = find_cycle_path(S.after, nxt, read == 2, p, pr == 0)
    stack = user_stack()
    if path is not None:
        new = Edge(p.name, nxt.name, pr, read, where, sync, stack)
        S.refused.setdefault((p.name, nxt.name, pr, read), new)
        chain = path_edges(path, read == 2) + [new]
        names = frozenset(e.src for e in chain)
        _note(S, ("circular", names), Report(
            "circular", lock=nxt.name, held=p.name, lock_read=read, held_read=pr,
            task=_task_name(),
            where=where, held_where=pwhere, chain=chain, held_locks=_held_locks(held),
            what=what,
        ), found)
        return
    if S.usage and (not sync or S.shadow):  # (a memo's union checks sync links too)
        U.check_dependency(S, held, p, pr, pwhere, nxt, read, where, state, found)
    if link is None:
        if S.nedges >= LIMITS.max_edges:
            _overflow(S, "lock dependencies (edges)", "max_edges")
            return
        link = Link(p, nxt)
        S.after.setdefault(p, {})[nxt] = link
        S.before.setdefault(nxt, {})[p] = link
        S.nedges += 1
    link.add(pr, read, where, sync, stack)


def _restart(S: State, held: list) -> None:
    """Adopt a stack from an earlier state: its locks will be released later; let that pass."""
    lax = (held[0][2] or []) + [e[0] for e in held[1:] if e[0] is not IRQ_MARK]
    del held[1:]
    held[0] = [None, S.root, lax]
    state = task_irq(_rt.current_task())
    if state:
        settle(S, held, state)


def settle(S: State, held: list, state: int, where: str | None = None) -> None:
    """Make the top of ``held`` say the task now runs in interrupt state ``state``: replace
    a mark on top, or push one, so the chains validated from here are those of this state
    (the chain cache keeps states apart, and the common case pays nothing for them)."""
    if held[-1][0] is IRQ_MARK:
        held.pop()
    base = _held_state(held)
    if base == state:
        return
    parent = held[-1][1]
    key = mark_key(state)
    node = parent.get(key)
    if node is None:
        node = _mark_miss(S, held, state, key, where)
        if node is None:
            return
    held.append((IRQ_MARK, node, base))


def _learn_mark(S: State, held: list, state: int, key: int, where: Any, parent: dict,
                node: dict) -> None:
    """An interrupt-state change, as validated in ``S``, in the memo's union state too (its
    effects are applied there each time: it is never remembered, only what follows it)."""
    mem = S.memo
    found: list[Report] = []
    U.mark_held(mem.union, held, _held_state(held), state, where, found)
    if found:
        mem.clean = False
        return
    at = memo.entry_at(S, parent)
    if at is not None:
        entry = at.children.get(key)
        if entry is None:
            entry = at.children[key] = memo.Entry(None, [])
        S.memo_at[id(node)] = (node, entry)


def _mark_miss(S: State, held: list, state: int, key: int, where: str | None) -> dict | None:
    """First time this chain changes to ``state``: locks held when interrupts come back on
    are now held with them enabled."""
    if where is None:
        where = site()
    if _reentered(S):
        return {_INFO: (None, state, False, where)}
    found: list[Report] = []
    with _GraphLock(S):
        if not S.on:
            return None
        parent = held[-1][1]
        node = parent.get(key)
        if node is not None:
            return node
        U.mark_held(S, held, _held_state(held), state, where, found)
        node = parent[key] = {_INFO: (None, state, False, where)}
        mem = S.memo
        if mem is not None and mem.clean:
            _learn_mark(S, held, state, key, where, parent, node)
    _emit(S, found)
    return node
