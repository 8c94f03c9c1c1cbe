"""Instance-level ordering for plain threading locks of one class.

The kernel puts every lock of a class in one class, and nesting two of them is an error unless
annotated. Unannotated Python code nests same-class locks all the time, safely, by taking them
in one fixed order: ``concurrent.futures.wait()`` takes every future's condition sorted by
id(), fasteners takes a list of locks in list order, dogpile takes key locks sorted, logging
handlers forward to other handlers. Nobody can annotate the standard library, so for plain
threading locks (and only those: ``kvmlock.sync`` keeps the kernel's strict class semantics)
two *different* locks of one class nested are ordered instance by instance: the order
``a -> b`` is recorded, and taking ``a`` while holding ``b`` (directly or through other
instances of that class) is an instance-level ABBA, reported with both call paths. A lock
that is garbage-collected takes its orders with it.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from kvmlock.lockdep.report import Edge, Report
from kvmlock.lockdep.state import State, _at, _held_locks, _info, _note, _task_name
from kvmlock.lockdep.where import user_stack

if TYPE_CHECKING:
    from kvmlock.lockdep.core import LockMap

_NOTE = ("Both locks are of one class (one creation site) but are different locks: this "
         "is an order between instances, taken both ways.")


class _Node:
    """One lock's outgoing instance orders: id(next lock) -> (ref, where, stack)."""

    __slots__ = ("ref", "out")

    def __init__(self, ref: weakref.ref) -> None:
        self.ref = ref
        self.out: dict[int, tuple[weakref.ref, str, tuple[str, ...]]] = {}


def _node(S: State, m: LockMap) -> _Node:
    inst = S.inst
    k = id(m)
    n = inst.get(k)
    if n is not None and n.ref() is m:
        return n

    def gone(_ref: weakref.ref, k: int = k) -> None:
        cur = inst.get(k)
        if cur is not None and cur.ref is _ref:
            del inst[k]

    n = inst[k] = _Node(weakref.ref(m, gone))
    return n


def _label(m: Any) -> str:
    return f"{m.name}[{hex(id(m))}]"


def _path(S: State, start: LockMap, target: LockMap) -> list[tuple[Any, Any, str, tuple]] | None:
    """A chain of recorded instance orders ``start -> ... -> target``, or None."""
    parent: dict[int, tuple[int, Any, Any, str, tuple] | None] = {id(start): None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        n = S.inst.get(id(cur))
        if n is None:
            continue
        for k, (ref, where, stack) in list(n.out.items()):
            nxt = ref()
            if nxt is None or k in parent:
                continue
            parent[k] = (id(cur), cur, nxt, where, stack)
            if nxt is target:
                steps = []
                back = parent[k]
                while back is not None:
                    pk, src, dst, w, st = back
                    steps.append((src, dst, w, st))
                    back = parent[pk]
                return steps[::-1]
            queue.append(nxt)
    return None


def instance_order(S: State, held: list, same: list, m: LockMap, read: int, where: str,
                   found: list[Report]) -> None:
    """``m`` is being taken while ``same`` (held locks of its class, other instances) are
    held: record each order, or report the one that closes a cycle (caller holds S.lock)."""
    stack: tuple[str, ...] | None = None
    for e in same:
        a = e[0]
        na = _node(S, a)
        known = na.out.get(id(m))
        if known is not None and known[0]() is m:
            continue
        if stack is None:
            stack = user_stack()
        path = _path(S, m, a)
        if path is None:
            _node(S, m)
            na.out[id(m)] = (weakref.ref(m), where, stack)
            continue
        chain = [Edge(_label(s), _label(d), 0, 0, w, False, st) for s, d, w, st in path]
        chain.append(Edge(_label(a), _label(m), 0, read, where, False, stack))
        hread = _info(e)[1]
        _note(S, ("circular", "instance", m.name, frozenset(c.where for c in chain)), Report(
            "circular", lock=_label(m), held=_label(a), lock_read=read, held_read=hread,
            task=_task_name(), where=where, held_where=_at(e), chain=chain,
            held_locks=_held_locks(held), what=_NOTE,
        ), found)
