"""The dependency graph between lock classes, and the search for a deadlocking cycle.

Each link ``A -> B`` ("B was taken while A was held") carries up to four kinds, from how A
was held (E: exclusively, S: shared) and how B was taken (R: recursive read, N: anything
else): -(ER)->, -(EN)->, -(SR)->, -(SN)->. Only *strong* paths are deadlocks: a path that
arrives at a lock as a recursive reader (-(*R)->) cannot leave it through a link that held the
lock shared (-(S*)->), because recursive readers never wait for each other.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from kvmlock.lockdep.report import Edge, ProtectedData

DEP_SR = 1  # src shared, dst recursive reader
DEP_ER = 2  # src exclusive, dst recursive reader
DEP_SN = 4  # src shared, dst non-recursive
DEP_EN = 8  # src exclusive, dst non-recursive
_S_MASK = DEP_SR | DEP_SN
_N_MASK = DEP_SN | DEP_EN


def dep_bit(src_read: int, dst_read: int) -> int:
    """The kind bit of a link from a lock held with ``src_read`` to one taken with ``dst_read``."""
    return 1 << ((src_read == 0) + ((dst_read != 2) << 1))


class LockClass:
    """What ordering is about: every lock built with the same key (and subclass) is one class."""

    __slots__ = ("name", "kind", "key", "subclass", "hid")

    def __init__(self, name: str, kind: str, key: object, subclass: int, index: int) -> None:
        self.name = name if subclass == 0 else f"{name}/{subclass}"
        self.kind = kind
        self.key = key
        self.subclass = subclass
        self.hid = index * 8  # low bits: read*2 + trylock, 6 = sync; see core.py

    def __repr__(self) -> str:
        return f"<lock class {self.name}>"


class Link:
    """All dependencies from one class to another, with where each kind was first made."""

    __slots__ = ("src", "dst", "dep", "sites", "stacks")

    def __init__(self, src: LockClass, dst: LockClass) -> None:
        self.src = src
        self.dst = dst
        self.dep = 0
        # (src_read, dst_read) -> first "file:line"; dst_read -1 marks a synchronize()
        self.sites: dict[tuple[int, int], str] = {}
        self.stacks: dict[tuple[int, int], tuple[str, ...]] = {}  # same keys: the call path

    def add(self, src_read: int, dst_read: int, where: str, sync: bool = False,
            stack: tuple[str, ...] = ()) -> None:
        self.dep |= dep_bit(src_read, dst_read)
        key = (src_read, -1 if sync else dst_read)
        if key not in self.sites:
            self.sites[key] = where
            self.stacks[key] = stack

    def edge(self, want_n: bool, want_e: bool | None = None) -> Edge:
        """An :class:`Edge` for this link, picking the recorded kind a path actually used."""
        best = None
        for (sr, key_dr), where in self.sites.items():
            dr = max(key_dr, 0)
            # leaving through an exclusive hold when required outranks preferring -(*N)->
            score = (want_e is None or (sr == 0) == want_e) * 2 + ((dr != 2) == want_n)
            if best is None or score > best[0]:
                best = (score, sr, dr, where, key_dr == -1, self.stacks.get((sr, key_dr), ()))
        assert best is not None
        return Edge(self.src.name, self.dst.name, *best[1:])


_EMPTY: dict = {}


def find_strong_path(
    after: dict[LockClass, dict[LockClass, Link]],
    start: LockClass, start_recursive: bool, target: LockClass, target_exclusive: bool,
    skip: Link | None = None,
) -> list[Link] | None:
    """Breadth-first search for a strong path ``start -> ... -> target``.

    ``start_recursive``: the new lock is being taken as a recursive reader, so the path may
    only leave it through links where it was held exclusively. ``target_exclusive``: the held
    lock is held exclusively, so any arrival at it conflicts; otherwise the path must arrive
    through a non-recursive (-(*N)->) link. The search state is (class, arrived-as-recursive),
    which is exact: arriving non-recursively dominates, so each class is expanded at most twice.
    ``skip``: a link the path may not use.
    """
    root = (start, start_recursive)
    parent: dict[tuple[LockClass, bool], tuple[tuple[LockClass, bool], Link] | None] = {root: None}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        cls, only_r = node
        for dst, link in after.get(cls, _EMPTY).items():
            if link is skip:
                continue
            dep = link.dep & ~_S_MASK if only_r else link.dep
            if not dep:
                continue
            arrive_r = not (dep & _N_MASK)
            if dst is target and (target_exclusive or not arrive_r):
                path = [link]
                back = parent[node]
                while back is not None:
                    node_prev, l2 = back
                    path.append(l2)
                    back = parent[node_prev]
                path.reverse()
                return path
            state = (dst, arrive_r)
            if state in parent or (arrive_r and (dst, False) in parent):
                continue
            parent[state] = (node, link)
            queue.append(state)
    return None


TASK_KEY = "asyncio.Task"  # the first item of an asyncio task class's key: (TASK_KEY, qualname)


def is_task_class(cls: LockClass) -> bool:
    """Whether ``cls`` is the pseudo-lock class of asyncio tasks of one coroutine function (in
    this process, or as a class id exported by another, see merge.class_id)."""
    key = cls.key
    if key.__class__ is tuple:
        return key[:1] == (TASK_KEY,)
    return key.__class__ is str and key.startswith(f'[["{TASK_KEY}"')


def find_cycle_path(
    after: dict[LockClass, dict[LockClass, Link]],
    start: LockClass, start_recursive: bool, target: LockClass, target_exclusive: bool,
) -> list[Link] | None:
    """:func:`find_strong_path` for a new dependency ``target -> start``, except that a lock
    class and a task class linked both ways directly are no cycle here: a task awaited with a
    lock of that class held, and a task of the class taking one of it first, are judged lock
    by lock (lockdep/instances.py), as nested locks of one class are."""
    path = find_strong_path(after, start, start_recursive, target, target_exclusive)
    if path is not None and len(path) == 1 and is_task_class(start) != is_task_class(target):
        path = find_strong_path(after, start, start_recursive, target, target_exclusive,
                                skip=path[0])
    return path


def path_edges(path: list[Link], start_recursive: bool) -> list[Edge]:
    """Render a found path as :class:`Edge` records using kinds consistent with strength."""
    edges = []
    need_e = start_recursive  # leaving a lock reached as recursive reader needs an E link
    for link in path:
        e = link.edge(True, True if need_e else None)
        edges.append(e)
        need_e = e.dst_read == 2
    return edges


@dataclass
class DepGraph:
    """A snapshot of the graph for tools (kvmlock.spec): class kinds and every dependency.

    ``refused`` holds the dependencies that closed a cycle: lockdep reported them instead of
    adding them, and they are exactly what breaks a documented order. ``chains`` lists which
    classes were held together when a lock was taken (outermost first); ``None`` means unknown
    (a graph saved without them), which is different from "no lock was ever nested".
    ``protected`` lists the protected data the run accessed (guarded fields, RCU pointers).
    """

    classes: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    refused: list[Edge] = field(default_factory=list)
    chains: list[tuple[str, ...]] | None = None
    protected: list[ProtectedData] = field(default_factory=list)

    def to_json(self, indent: int | None = 2) -> str:
        data: dict[str, Any] = {"classes": self.classes, "edges": [asdict(e) for e in self.edges],
                                "refused": [asdict(e) for e in self.refused]}
        if self.chains is not None:
            data["chains"] = [list(c) for c in self.chains]
        if self.protected:
            data["protected"] = [asdict(p) for p in self.protected]
        return json.dumps(data, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> DepGraph:
        """Rebuild a snapshot; malformed input raises ValueError naming what is wrong."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"DepGraph.from_json: not JSON: {exc}") from None
        if not isinstance(data, dict) or "classes" not in data or "edges" not in data:
            raise ValueError("DepGraph.from_json: expected an object with 'classes' and 'edges'")
        if not isinstance(data["classes"], dict) or not isinstance(data["edges"], list):
            raise ValueError("DepGraph.from_json: 'classes' must be an object, 'edges' a list")
        lists: dict[str, list[Edge]] = {"edges": [], "refused": []}
        for part, out in lists.items():
            for i, e in enumerate(data.get(part, [])):
                try:
                    if isinstance(e, dict) and isinstance(e.get("stack"), list):
                        e = {**e, "stack": tuple(e["stack"])}  # JSON has no tuples
                    out.append(Edge(**e))
                except TypeError as exc:
                    raise ValueError(
                        f"DepGraph.from_json: {part[:-1]} #{i} is malformed: {exc}") from None
        chains = data.get("chains")
        if chains is not None and not (
            isinstance(chains, list)
            and all(isinstance(c, list) and all(isinstance(n, str) for n in c) for c in chains)
        ):
            raise ValueError("DepGraph.from_json: 'chains' must be a list of lists of class names")
        return cls(dict(data["classes"]), lists["edges"], lists["refused"],
                   None if chains is None else [tuple(c) for c in chains],
                   protected_from_json(data.get("protected") or []))

    def successors(self, name: str) -> set[str]:
        return {e.dst for e in self.edges if e.src == name}

    def has_edge(self, src: str, dst: str) -> bool:
        return any(e.src == src and e.dst == dst for e in self.edges)


def protected_from_json(items: Any) -> list[ProtectedData]:
    """Rebuild the ``protected`` list of a saved graph; ValueError names a malformed entry."""
    out = []
    if not isinstance(items, list):
        raise ValueError("graph 'protected' must be a list")
    for i, p in enumerate(items):
        try:
            d = dict(p)
            d["updates"] = [(tuple(held), str(where)) for held, where in d.get("updates", [])]
            out.append(ProtectedData(**d))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"graph 'protected' #{i} is malformed: {exc}") from None
    return out
