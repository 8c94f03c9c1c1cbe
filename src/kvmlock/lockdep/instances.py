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


#: One step of an instance order as a report shows it: (src label, dst label, where, call
#: path, whether dst was waited for rather than taken). A direct nesting is one step; an order
#: made through an awaited task is two (the lock held -> the task, the task -> its lock).
Step = tuple[str, str, str, tuple[str, ...], bool]


class _Node:
    """One lock's outgoing instance orders: id(next lock) -> (ref, steps)."""

    __slots__ = ("ref", "out")

    def __init__(self, ref: weakref.ref) -> None:
        self.ref = ref
        self.out: dict[int, tuple[weakref.ref, tuple[Step, ...]]] = {}


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


def label(m: Any) -> str:
    """A lock (or task) instance as a report names it: its class and its address."""
    return f"{m.name}[{hex(id(m))}]"


def _path(S: State, start: LockMap, target: LockMap) -> list[Step] | None:
    """The steps of a chain of recorded instance orders ``start -> ... -> target``, or None."""
    parent: dict[int, tuple[int, tuple[Step, ...]] | None] = {id(start): None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        n = S.inst.get(id(cur))
        if n is None:
            continue
        for k, (ref, steps) in list(n.out.items()):
            nxt = ref()
            if nxt is None or k in parent:
                continue
            parent[k] = (id(cur), steps)
            if nxt is target:
                out: list[Step] = []
                back = parent[k]
                while back is not None:
                    pk, st = back
                    out[:0] = st
                    back = parent[pk]
                return out
            queue.append(nxt)
    return None


def instance_order(S: State, held: list, same: list, m: LockMap, read: int, where: str,
                   found: list[Report]) -> None:
    """``m`` is being taken while ``same`` (held locks of its class, other instances) are
    held: record each order, or report the one that closes a cycle (caller holds S.lock)."""
    stack: tuple[str, ...] | None = None
    for e in same:
        a = e[0]
        if _known(S, a, m):
            continue
        if stack is None:
            stack = user_stack()
        order(S, held, a, m, _at(e), ((label(a), label(m), where, stack, False),), found,
              read=read, hread=_info(e)[1])


def _class_of(label: str) -> str:
    return label.rsplit("[", 1)[0]


def _is_task(name: str) -> bool:
    return name.startswith("task:")


def _class_graph_reports(names: list[str], steps: tuple[Step, ...]) -> bool:
    """Whether the class graph finds this cycle itself (validate._link): its classes are
    distinct, each step is a dependency the class graph has (a task awaiting another while
    holding no lock makes none), and it is not a lock class and a task class linked both ways
    (graph.find_cycle_path leaves those to this module)."""
    if len(set(names)) != len(names):
        return False
    if any(_is_task(_class_of(s)) and _is_task(_class_of(d)) for s, d, *_ in steps):
        return False
    return not (len(names) == 2 and _is_task(names[0]) != _is_task(names[1]))


def _known(S: State, a: Any, m: Any) -> bool:
    n = S.inst.get(id(a))
    known = n.out.get(id(m)) if n is not None and n.ref() is a else None
    return known is not None and known[0]() is m


def order(S: State, held: list, a: Any, m: Any, held_where: str, steps: tuple[Step, ...],
          found: list[Report], now: int = -1, read: int = 0, hread: int = 0,
          what: str = _NOTE) -> None:
    """Record the instance order ``a -> m`` made by ``steps`` (``steps[now]`` is being made
    by the running task), or report the cycle it closes with the orders already recorded
    (caller holds S.lock)."""
    if a is m:  # the very lock: the cycle closes here
        path: list[Step] | None = []
        what = _SAME_NOTE
    elif _known(S, a, m):
        return
    else:
        path = _path(S, m, a)
    if path is None:
        _node(S, m)
        _node(S, a).out[id(m)] = (weakref.ref(m), steps)
        return
    now %= len(steps)
    names = [_class_of(st[0]) for st in (*path, *steps)]
    if _class_graph_reports(names, (*path, *steps)):
        return
    # the cycle, ending with the step being made: a report reads "taking the last link's
    # destination while holding its source, which already depends on it"
    cyc = [*steps[now + 1:], *path, *steps[:now + 1]]
    chain = [Edge(s, d, 0, 0, w, sync, st) for s, d, w, st, sync in cyc]
    new = chain[-1]
    chain[-1] = Edge(new.src, new.dst, hread, read, new.where, new.sync, new.stack)
    _note(S, ("circular", "instance", m.name, frozenset(c.where for c in chain)
              if a is not m else frozenset(names)), Report(
        "circular", lock=new.dst, held=new.src, lock_read=read, held_read=hread,
        task=_task_name(), where=new.where, held_where=held_where, chain=chain,
        held_locks=_held_locks(held), what=what,
    ), found)


# Awaited tasks. A task holds a pseudo-lock of its class (its coroutine function) for its whole
# life, so awaiting it with a lock held orders that lock before the task's class, and the locks
# the task takes first after it. When the held lock and a lock the task takes first are of one
# class -- a recursive tree walk holding a parent node's lock while it gathers its children's
# walks -- the class graph sees that class on both sides of the task class, a cycle of two
# (which graph.find_cycle_path leaves alone). Such a pair is judged here instead, instance by
# instance, as same-class nesting is: the very lock held while awaiting the task that takes it
# is a deadlock; two different locks are an instance order (held lock -> the awaited task ->
# its lock), checked together with the direct nestings. So is a lock of another class, since
# tasks of one coroutine holding ``a`` for ``b`` and ``b`` for ``a`` meet in the class graph
# as two such pairs, not as a cycle; a cycle of distinct classes is left to the class graph.

_TASK_NOTE = ("Locks ordered through awaited tasks (a lock held while a task is awaited, "
              "before the lock that task takes) in both directions; tasks of one coroutine "
              "are told apart here, as are locks of one creation site.")
_SAME_NOTE = ("The task awaited while this lock is held takes it: the awaiter waits for the "
              "task, the task for the lock.")


#: What a task's awaiters hold: (the lock, the steps from it to the task -- the await, or a
#: chain of awaits through tasks that held nothing themselves -- where it was taken).
Under = tuple[Any, tuple[Step, ...], str]


def task_takes(S: State, held: list, tmap: Any, awaited_under: list[Under], took: dict,
               m: LockMap, where: str, stack: tuple, found: list[Report]) -> None:
    """The running task (pseudo-lock ``tmap``, awaited so far by tasks holding
    ``awaited_under``) takes ``m`` while holding nothing else (caller holds S.lock)."""
    take = (label(tmap), label(m), where, stack, False)
    for href, to_task, _h_at in awaited_under:
        h = href()
        if h is not None:
            order(S, held, h, m, _at(held[-1]), (*to_task, take), found, what=_TASK_NOTE)
    took[id(m)] = (weakref.ref(m), where, stack)


def task_awaited(S: State, held: list, tmap: Any, awaited_under: list[Under], took: dict,
                 where: str, stack: tuple, found: list[Report], via: Any = None,
                 via_under: list[Under] = ()) -> None:  # type: ignore[assignment]
    """The running task awaits the task of pseudo-lock ``tmap`` (which took ``took`` first so
    far), holding the top lock of ``held``; or, with ``via`` (its own pseudo-lock), holding
    nothing, while awaited by tasks holding ``via_under``, which now wait for that task too
    (caller holds S.lock)."""
    if via is None:
        e = held[-1]
        new = [(weakref.ref(e[0]), ((label(e[0]), label(tmap), where, stack, True),), _at(e))]
    else:
        hop = (label(via), label(tmap), where, stack, True)
        new = [(ref, (*steps, hop), h_at) for ref, steps, h_at in via_under]
    for ref, steps, h_at in new:
        h = ref()
        if h is None or any(u[0] is ref and len(u[1]) <= len(steps) for u in awaited_under):
            continue
        for mref, mwhere, mstack in list(took.values()):
            m = mref()
            if m is not None:
                order(S, held, h, m, _at(held[-1]), (*steps, (label(tmap), label(m), mwhere,
                                                                mstack, False)),
                      found, now=len(steps) - 1, what=_TASK_NOTE)
        awaited_under.append((ref, steps, h_at))
