"""lockdep's dependency graph as the checker sees it: classes, edges, strong-path search.

The checker accepts a graph from three places -- a real-thread run, an explored run, a file saved
earlier -- so it reads any of them into one small view here. Subclasses (``vcpu->mutex/1``) are
folded into their class, because the document speaks of classes and nesting one instance inside
another of the same class on purpose is not an ordering fact.

Reachability follows lockdep's notion of a *strong* path: a step that ends in a recursive read
(``-(*R)->``) cannot be followed by a step that leaves that lock as a reader (``-(S*)->``).
Two SRCU readers, or two rwlock_t readers, do not wait for each other, so such a path is no
dependency at all.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kvmlock.lockdep import graph as _lockdep_graph
from kvmlock.lockdep.graph import protected_from_json
from kvmlock.spec.model import SpecError
from kvmlock.spec.names import strip_subclass


@dataclass(frozen=True)
class Edge:
    """``src`` was held (as ``src_read``) when ``dst`` was acquired (as ``dst_read``).

    read: 0 exclusive, 1 shared, 2 recursive shared, -1 not recorded (a /proc/lockdep dump).
    ``where`` is the user's file:line.
    """

    src: str
    dst: str
    src_read: int = 0
    dst_read: int = 0
    where: str = ""

    def show(self) -> str:
        return f"{_mode(self.src, self.src_read)} -> {_mode(self.dst, self.dst_read)}"


def _mode(name: str, read: int) -> str:
    return name + {0: "", 1: "(read)", 2: "(read, recursive)"}.get(read, f"(read={read})")


@dataclass
class GraphView:
    classes: dict[str, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    #: held-lock stacks seen at acquire time (outermost first), when the graph records them
    chains: list[tuple[str, ...]] | None = None
    #: protected data the run accessed (lockdep ProtectedData); None: the graph does not say
    protected: list[Any] | None = None

    def __post_init__(self) -> None:
        self._out: dict[str, list[Edge]] = {}
        for e in self.edges:
            self._out.setdefault(e.src, []).append(e)

    def out(self, name: str) -> list[Edge]:
        return self._out.get(name, [])

    def path(
        self,
        starts: Iterable[Edge],
        goal: str,
        last_ok: Any = None,
    ) -> list[Edge] | None:
        """A shortest strong path that begins with one of ``starts`` and ends at ``goal``.

        ``last_ok(edge)`` can restrict the final step (e.g. "must be a write acquire").
        """
        queue: deque[tuple[Edge, tuple[Edge, ...]]] = deque()
        seen: set[tuple[str, bool]] = set()
        for e in starts:
            queue.append((e, (e,)))
        while queue:
            e, trail = queue.popleft()
            if e.dst == goal and (last_ok is None or last_ok(e)):
                return list(trail)
            recursive = e.dst_read in (2, -1)  # -1: mode unknown, may have been a reader
            state = (e.dst, recursive)
            if state in seen:
                continue
            seen.add(state)
            for nxt in self.out(e.dst):
                if recursive and nxt.src_read != 0:
                    continue  # -(*R)-> -(S*)-> : not a strong path
                queue.append((nxt, (*trail, nxt)))
        return None

    def path_between(self, src: str, dst: str, last_ok: Any = None) -> list[Edge] | None:
        return self.path(self.out(src), dst, last_ok)


def view(graph: Any) -> GraphView:
    """Read a lockdep ``DepGraph``, a :class:`GraphView`, a saved-graph dict or a JSON path."""
    if isinstance(graph, GraphView):
        return graph
    if isinstance(graph, str | os.PathLike):
        return load_graph(graph)
    if isinstance(graph, dict):
        raw_classes, raw_edges, raw_chains = (
            graph.get("classes"), [*(graph.get("edges") or ()), *(graph.get("refused") or ())],
            graph.get("chains"),
        )
        raw_protected = graph.get("protected")
        protected = None if raw_protected is None else protected_from_json(raw_protected)
    elif hasattr(graph, "classes") and hasattr(graph, "edges"):
        raw_classes, raw_chains = graph.classes, getattr(graph, "chains", None)
        protected = getattr(graph, "protected", None)
        # a refused dependency was still taken by the program: it is evidence like any other
        raw_edges = [*graph.edges, *getattr(graph, "refused", ())]
    else:
        raise TypeError(
            "expected a lockdep DepGraph (kvmlock.lockdep.graph()), a saved graph or its path, "
            f"not {type(graph).__name__}"
        )
    if not isinstance(raw_classes, dict):
        raise ValueError("graph 'classes' must map class name -> lock kind")
    classes: dict[str, str] = {}
    for name, kind in raw_classes.items():
        classes.setdefault(strip_subclass(str(name)), str(kind))
    edges: dict[tuple[str, str, int, int], Edge] = {}
    for i, raw in enumerate(raw_edges or ()):
        e = _edge(raw, i)
        if e.src == e.dst:
            continue  # same class nested through a subclass annotation: deliberate
        edges.setdefault((e.src, e.dst, e.src_read, e.dst_read), e)
    chains = None
    if raw_chains is not None:
        chains = [tuple(strip_subclass(_chain_name(x)) for x in c) for c in raw_chains]
    return GraphView(classes, list(edges.values()), chains,
                     None if protected is None else list(protected))


def _chain_name(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list | tuple) and x:
        return str(x[0])
    return str(getattr(x, "name", x))


def _edge(raw: Any, i: int) -> Edge:
    try:
        if isinstance(raw, Edge):
            e = raw
        elif isinstance(raw, dict):
            e = Edge(raw["src"], raw["dst"], int(raw.get("src_read", 0)),
                     int(raw.get("dst_read", 0)), str(raw.get("where", "") or ""))
        elif isinstance(raw, list | tuple):
            src, dst, *rest = raw
            e = Edge(src, dst, int(rest[0]) if len(rest) > 0 else 0,
                     int(rest[1]) if len(rest) > 1 else 0,
                     str(rest[2] or "") if len(rest) > 2 else "")
        else:
            e = Edge(raw.src, raw.dst, int(getattr(raw, "src_read", 0)),
                     int(getattr(raw, "dst_read", 0)), str(getattr(raw, "where", "") or ""))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"graph edge #{i} is not (src, dst, src_read, dst_read, where): {raw!r} ({exc})"
        ) from None
    return Edge(strip_subclass(str(e.src)), strip_subclass(str(e.dst)), e.src_read,
                e.dst_read, e.where)


def to_json(graph: Any) -> dict[str, Any]:
    """The saved-graph format ``kvmlock spec check --graph`` reads."""
    g = view(graph)
    data: dict[str, Any] = {
        "classes": dict(sorted(g.classes.items())),
        "edges": [
            {"src": e.src, "dst": e.dst, "src_read": e.src_read, "dst_read": e.dst_read,
             "where": e.where}
            for e in g.edges
        ],
    }
    if g.chains is not None:
        data["chains"] = [list(c) for c in g.chains]
    if g.protected is not None:
        data["protected"] = [asdict(p) for p in g.protected]
    return data


def save_graph(graph: Any, path: str | os.PathLike[str]) -> None:
    """Keep a run's graph so documents can be checked later without re-running anything."""
    Path(path).write_text(json.dumps(to_json(graph), indent=1) + "\n", encoding="utf-8")


def load_graph(path: str | os.PathLike[str]) -> GraphView:
    """Read a graph saved by :func:`save_graph` or ``DepGraph.to_json()``; errors name it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"no such graph file: {str(p)!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{p}: not a saved dependency graph ({exc})") from None
    if not isinstance(data, dict) or "classes" not in data or "edges" not in data:
        raise SpecError(f"{p}: a saved graph is a JSON object with 'classes' and 'edges'")
    try:
        return view(data)
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{p}: {exc}") from None


# --------------------------------------------------------------------------- live snapshot


def snapshot() -> GraphView:
    """The current lockdep graph as the checker sees it.

    Take it inside the same ``lockdep.isolated()`` block as the run: besides the dependencies
    lockdep accepted it carries the ones lockdep *refused* because they closed a cycle it
    reported (exactly the edges that break a documented order) and the held-lock chains that
    "cannot be taken without holding" rules need.
    """
    return view(_lockdep_graph())


def merge(*graphs: Any) -> GraphView:
    """One graph from several runs (each explored execution has its own lockdep state).

    Classes, edges and chains are united; an edge keeps the file:line of the first graph that
    has it. Chains are kept only if every graph has them, so a merged graph never claims to know
    held-together locks for a run it cannot see.
    """
    classes: dict[str, str] = {}
    edges: dict[tuple[str, str, int, int], Edge] = {}
    chains: dict[tuple[str, ...], None] | None = {}
    protected: dict[tuple[str, str, str], Any] | None = None
    for raw in graphs:
        g = view(raw)
        if g.protected is not None:
            protected = _merge_protected(protected or {}, g.protected)
        for name, kind in g.classes.items():
            classes.setdefault(name, kind)
        for e in g.edges:
            edges.setdefault((e.src, e.dst, e.src_read, e.dst_read), e)
        if chains is not None and g.chains is not None:
            for c in g.chains:
                chains.setdefault(c, None)
        else:
            chains = None
    return GraphView(classes, list(edges.values()), None if chains is None else list(chains),
                     None if protected is None else list(protected.values()))


def _merge_protected(into: dict[tuple[str, str, str], Any], more: Iterable[Any],
                     ) -> dict[tuple[str, str, str], Any]:
    """Unite protected-data records: one per datum, violations and update sides joined."""
    for p in more:
        key = (p.kind, p.name, "" if p.kind == "rcu" else p.lock)
        have = into.get(key)
        if have is None:
            into[key] = replace(p, violations=list(p.violations), updates=list(p.updates))
            continue
        have.lock = have.lock or p.lock
        have.violations += [w for w in p.violations if w not in have.violations]
        seen = {h for h, _w in have.updates}
        have.updates += [(h, w) for h, w in p.updates if h not in seen]
    return into
