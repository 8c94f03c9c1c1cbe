"""What each state of the exploration path still has to explore: wakeup trees, sleep sets, and
the source-set rule (Abdulla, Aronis, Jonsson, Sagonas, POPL 2014).

A state's *wakeup tree* holds the branches to explore from it, leftmost first. A branch is a
list ``[task, op, children]``: the task to run first, its operation (:data:`events.Op`), and
the wakeup tree of the state that step leads to, which the next execution follows step by step
so that it reaches the reversed race without choices a sleep set would cut short. Its *sleep
set* holds the tasks already explored from an earlier state whose next operation is
independent of everything run since: running one of them first again would give an execution
equivalent to one already explored.

A race ``(j, i)`` found by :class:`events.Events` means the state before ``j`` must also
explore ``i`` going first, by the wakeup sequence ``notdep(j).i``. :func:`insert` puts it in
that state's tree unless a sleeping or explored task, or a branch already there, is a *weak
initial* of it (:func:`weak_initial`: it can go first in an equivalent reordering of the
sequence followed by more events), which makes exploring it redundant. With that rule no two
complete executions are equivalent: the number of complete executions is the number of traces.

:func:`source_branch` is the simpler *source-set* rule, which a parallel exploration uses: it
depends on no order between a state's branches, so subtrees explored at once stay sound.
"""

from __future__ import annotations

from kvmlock.explore.records import Pending
from kvmlock.explore.strategies.events import Event, Events, Op, conflict

#: One branch of a wakeup tree: ``[task, op, children]`` (a list: the tree is cut as it is
#: explored, and handed between processes as it is).
Branch = list

_EMPTY: tuple[dict, dict] = ({}, {})
NO_SLEEP: dict[int, Op] = {}  # shared while empty: never mutated in place
PATH: set[int] = set()  # the ``done`` of a path state never run by this explorer


class State:
    """One state on the current exploration path, and what is left to explore from it."""

    __slots__ = ("choice", "done", "wut", "sleep", "ops", "enabled", "waits", "cur", "pre",
                 "snap")

    def __init__(self, enabled: tuple[Pending, ...] = (), waits: tuple[Pending, ...] = (),
                 cur: int = -1, pre: int = 0, sleep: dict[int, Op] | None = None,
                 snap: tuple[dict, dict] | None = None) -> None:
        self.choice = -1  # the task taken from here on the current path
        self.done: set[int]  # tasks taken from here so far (set with the first choice)
        # the wakeup tree; the current choice's branch stays in it until its exploration ends
        self.wut: list[Branch]
        self.ops: dict[int, Op] = {}  # the operation of each task explored from here
        self.enabled = enabled
        self.waits = waits  # the waits disabled here
        self.cur = cur  # the task that stopped at this state (-1: it ended)
        self.pre = pre  # preemptions before this state
        self.sleep = NO_SLEEP if sleep is None else sleep
        self.snap = _EMPTY if snap is None else snap  # the blocker and enabler maps here

    def left(self, q: int, bound: int | None) -> bool:
        """Task ``q`` is still worth starting from here: not explored, not asleep, runnable,
        and within the preemption bound."""
        return not (q in self.done or q in self.sleep
                    or all(t.tid != q for t in self.enabled)
                    or (bound is not None and self.cur >= 0 and q != self.cur
                        and self.pre + 1 > bound))


def placeholder(choice: int) -> State:
    """A state on the way to a subtree's root: only its choice is known, and matters."""
    node = State()
    node.choice = choice
    node.done = PATH
    node.wut = [[choice, None, []]]
    return node


def weak_initial(ev: Events, q: int, op: Op, seq: list[int]) -> bool:
    """Can task ``q`` (next operation ``op``) go first in some reordering of ``seq`` (event
    indices of ``ev``) that is equivalent to it followed by more events?"""
    ev_tid = ev.tid
    for k, y in enumerate(seq):
        if ev_tid[y] == q:
            cy = ev.clock[y]
            ev_local = ev.local
            # no earlier event of seq happens before q's first one
            return all(cy[ev_tid[x]] < ev_local[x] for x in seq[:k])
    obj, write = op
    if obj is None:
        return True  # spawn, join: independent of everything
    ev_more, ev_write = ev.more, ev.write
    if type(obj) is tuple:  # compound (see events.conflict)
        return not any(conflict(obj, ev_more[x][0]) for x in seq)
    for x in reversed(seq):  # independent(), inlined; the racing event is last, so a
        if ev_more[x][0] == obj and (write or ev_write[x]):  # conflict shows up early
            return False
    return True


def covered(node: State, ev: Events, seq: list[int]) -> bool:
    """A task asleep at ``node``, or explored from it, starts an execution equivalent to the
    wakeup sequence ``seq``."""
    for q, op in node.sleep.items():
        if weak_initial(ev, q, op, seq):
            return True
    ops = node.ops
    for q in node.done:
        if q != node.choice and q in ops and weak_initial(ev, q, ops[q], seq):
            return True
    return False


def insert(tree: list[Branch], ev: Events, seq: list[int], racer: int) -> None:
    """Insert the wakeup sequence ``seq`` into ``tree`` unless it already holds an equivalent
    branch: go down the leftmost branch whose task is a weak initial of what is left of the
    sequence (removing that task's first event from it); a leaf reached, or the sequence used
    up, means an equivalent branch is (being) explored; else the rest becomes a new rightmost
    branch. ``seq`` is consumed. The task ``racer`` (the one that did the first event of the
    race) cannot go first: the race's two events conflict, or one disabled the other,
    whatever their operations say."""
    ev_tid = ev.tid
    children = tree
    while True:
        for entry in children:
            if entry[0] != racer and weak_initial(ev, entry[0], entry[1], seq):
                if not entry[2]:
                    return  # a leaf: an equivalent branch is (being) explored
                q = entry[0]
                for n, x in enumerate(seq):
                    if ev_tid[x] == q:
                        del seq[n]
                        break
                if not seq:
                    return
                children = entry[2]
                break
        else:
            for x in seq:  # a new rightmost branch
                entry = [ev_tid[x], ev.op(x), []]
                children.append(entry)
                children = entry[2]
            return


def source_branch(seq: list[Event], have: set[int] | dict, enabled: set[int]) -> Branch | None:
    """The source-set rule (Abdulla et al., POPL 2014, Algorithm 1) for the wakeup sequence
    ``seq`` at a state whose branches (started, queued, or asleep there) are ``have``: None
    when one of them is an *initial* of ``seq`` (its first event there has nothing of ``seq``
    before it), so exploring that branch covers the reversal (or did: a sleeping one); else a
    new branch: the first initial that can run at that state goes first, the rest of ``seq``
    after it as its wakeup subtree."""
    firsts: set[int] = set()
    pick = -1
    for k, (tid, _local, cy, _obj, _w) in enumerate(seq):
        if tid in firsts:
            continue
        firsts.add(tid)
        if all(cy[x[0]] < x[1] for x in seq[:k]):
            if tid in have:
                return None
            if pick < 0 and tid in enabled:
                pick = k
    if pick < 0:
        return None  # none can run there: nothing to add, as the sequential search drops it
    out: list = []
    children = out
    for tid, _l, _c, obj, write in [seq[pick]] + seq[:pick] + seq[pick + 1:]:
        entry = [tid, (obj, write), []]
        children.append(entry)
        children = entry[2]
    return out[0]
