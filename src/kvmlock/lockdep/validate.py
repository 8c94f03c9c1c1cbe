"""The slow path: validating a chain of held locks the first time it is seen.

Runs under the graph lock. Checks, in the kernel's order: sleeping under a spinning lock, the
same class taken twice (AA), then the new dependencies from the held locks -- each one a
breadth-first search for a strong cycle it would close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock.lockdep.graph import Link, LockClass, dep_bit, find_strong_path, path_edges
from kvmlock.lockdep.report import Edge, Report
from kvmlock.lockdep.state import (
    _INFO,
    LIMITS,
    OPTIONS,
    RT_SLEEPING,
    SLEEPING,
    SPINNING,
    State,
    _emit,
    _GraphLock,
    _held_locks,
    _info,
    _note,
    _overflow,
    _reentered,
    _task_name,
)
from kvmlock.lockdep.where import user_site

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
            if not S.on:
                return None  # a table overflowed while validating
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
    entries = held[1:]
    if sync or m.kind in SLEEPING:
        for e in entries:
            if e[0].kind in SPINNING:
                hcls, hread, _t, _w = _info(e)
                what = f"synchronize({cls.name})" if sync else f"lock({cls.name})"
                _note(S, ("sleep_in_atomic", hcls.name, where), Report(
                    "sleep_in_atomic", lock=cls.name, held=hcls.name, held_read=hread,
                    task=_task_name(), where=where, what=what, held_locks=_held_locks(held),
                ), found)
                break
    if OPTIONS["raw_nesting"] and m.kind in RT_SLEEPING:
        for e in entries:
            if e[0].kind == "raw_spinlock":
                hcls, hread, _t, _w = _info(e)
                _note(S, ("wait_context", hcls.name, cls.name), Report(
                    "wait_context", lock=cls.name, held=hcls.name, held_read=hread,
                    lock_read=read, task=_task_name(), where=where,
                    held_locks=_held_locks(held),
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
                held_where=hwhere, task=_task_name(), where=where, held_locks=_held_locks(held),
            ), found)
            return
    # Link from the held locks: the top one, and below it through trylocks (a lock taken
    # normally already linked itself to everything under it).
    for e in reversed(entries):
        hcls, hread, htry, hwhere = _info(e)
        if hcls is not cls:
            _link(S, held, hcls, hread, hwhere, cls, read, where, found, sync)
        if not htry:
            break


def _link(
    S: State, held: list, p: LockClass, pr: int, pwhere: str, nxt: LockClass, read: int,
    where: str, found: list[Report], sync: bool = False,
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
            "circular", lock=nxt.name, held=p.name, lock_read=read, held_read=pr,
            task=_task_name(),
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


def _restart(S: State, held: list) -> None:
    """Adopt a stack from an earlier state: its locks will be released later; let that pass."""
    lax = (held[0][2] or []) + [e[0] for e in held[1:]]
    del held[1:]
    held[0] = [None, S.root, lax]
