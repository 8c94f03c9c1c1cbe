"""The chain cache of a whole exploration: a chain validated once is not validated again.

The explorer gives every execution a fresh lockdep state, so each execution's reports, graph
and chains are its own (a failure replays alone). Without more, every execution would validate
each of its chains again. A :class:`Memo` lives as long as one exploration and remembers, per
chain, what validating it *did* to a state: the usage bits it set and the dependencies it
added. An execution's first sighting of a remembered chain applies those effects (with this
execution's own site) instead of validating it: no cycle search, no usage search, no report.

Why that is exact. Besides the execution states, the memo keeps one more state, the *union*
(``Memo.union``): every chain any execution validated is validated there too, and a remembered
chain's effects were applied there when it was first validated. So each execution's graph and
usage bits are a subset of the union's. Every check lockdep makes is a search for a structure
(a strong cycle, an irq-safe class reaching an irq-unsafe one, both directions of a usage bit)
that only more dependencies and bits can create, and the union checks each structure when its
last piece is added to it (its sync dependencies included, which an execution state does not
check for usage: see ``_validate_union``). While the union has never found a problem
(``Memo.clean``), no structure exists in it, hence none in any execution's state: a remembered
chain would have validated without a report. The first problem the union finds switches the
memo off for the rest of the exploration; from then on every chain is validated as before.

A chain's verdict also depends on the kinds of the lock objects behind its classes (two locks
may share a class and differ in kind) and on ``prove_raw_nesting``: both are part of what a
remembered chain is matched against. Chains whose checks depend on lock *instances* (a nest
lock, plain threading locks of one class) are never remembered.
"""

from __future__ import annotations

from typing import Any

from kvmlock.lockdep.graph import Link, LockClass, dep_bit
from kvmlock.lockdep.state import _INFO, IRQ_MARK, LIMITS, OPTIONS, State
from kvmlock.lockdep.where import user_stack


class Entry:
    """A remembered chain: what it is matched against, its effects, the chains under it."""

    __slots__ = ("kinds", "effects", "nlinks", "children")

    def __init__(self, kinds: tuple | None, effects: list[tuple]) -> None:
        self.kinds = kinds
        # (class, usage bit) or (held class, held read, class, read, sync), in validation order
        self.effects = effects
        self.nlinks = sum(len(e) == 5 for e in effects)
        self.children: dict[int, Entry] = {}


class Memo:
    """One exploration's memory of validated chains (see the module docstring)."""

    __slots__ = ("union", "root", "clean", "hits", "misses")

    def __init__(self) -> None:
        self.union = State("collect")
        self.union.shadow = True  # its reports only say "not clean": nobody sees them
        self.root = Entry(None, [])
        self.clean = True
        self.hits = 0
        self.misses = 0

    def attach(self, S: State) -> None:
        """Let execution state ``S`` use this memo (its chain trie is still its own)."""
        S.memo = self
        S.memo_at = {id(S.root): (S.root, self.root)}


def kinds_of(held: list, m: Any) -> tuple:
    """What besides the chain's classes its verdict depends on (see the module docstring)."""
    return (m.kind, OPTIONS["raw_nesting"], *[e[0].kind for e in held[1:] if e[0] is not IRQ_MARK])


def entry_at(S: State, parent: dict) -> Entry | None:
    """The memo entry of the chain ending at trie node ``parent`` (whose ``children`` are the
    chains that extend it), if one is known."""
    hit = S.memo_at.get(id(parent))
    if hit is None or hit[0] is not parent:
        return None
    return hit[1]


def apply(S: State, held: list, m: Any, cls: LockClass, read: int, trylock: bool, hid: int,
          where: Any, entry: Entry) -> dict | None:
    """Give ``S`` the effects of remembered chain ``entry`` as validating it would, with
    ``where`` as its site; the new trie node, or None when a table could overflow (the
    caller then validates, which reports the overflow)."""
    if (len(held) > LIMITS.max_depth or S.nchains >= LIMITS.max_chains
            or len(S.classes) >= LIMITS.max_classes
            or S.nedges + entry.nlinks > LIMITS.max_edges):
        return None
    if cls not in S.classes:
        S.classes[cls] = m.kind
    usage = S.usage
    stack = None
    for eff in entry.effects:
        if len(eff) == 2:
            k, bit = eff
            u = usage.get(k, 0)
            if not u >> bit & 1:
                usage[k] = u | 1 << bit
                S.usage_where.setdefault((k, bit), where)
            continue
        p, pr, x, rd, sync = eff
        after = S.after.get(p)
        link = after.get(x) if after else None
        if link is not None and link.dep & dep_bit(pr, rd):
            link.sites.setdefault((pr, -1 if sync else rd), where)
            continue
        if stack is None:
            stack = user_stack()
        if link is None:
            link = Link(p, x)
            S.after.setdefault(p, {})[x] = link
            S.before.setdefault(x, {})[p] = link
            S.nedges += 1
        link.add(pr, rd, where, sync, stack)
    node = {_INFO: (cls, read, trylock, where)}
    held[-1][1][hid] = node
    S.nchains += 1
    S.memo_at[id(node)] = (node, entry)
    return node
