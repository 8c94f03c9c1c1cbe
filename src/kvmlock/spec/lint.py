"""Contradictions inside a document, found without running anything.

A locking document is edited by many hands over many releases; a new bullet can quietly reverse
an old one (one kernel release listed "A outside B" and "B outside A" at the same time). No run
of any program can conform to such a document, so these are worth reporting before checking code.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmlock.spec.model import Rule, Spec


@dataclass
class Finding:
    kind: str  # "cycle" | "leaf" | "srcu" | "forbidden" | "type"
    message: str
    lines: tuple[int, ...]
    nodes: frozenset[str] = frozenset()


def lint(spec: Spec) -> list[Finding]:
    """Every contradiction between the document's own rules, in a stable order."""
    srcu = _srcu(spec)
    # "sync under A" plus "A inside the read side" is also a two-step cycle; say it once
    both_ways = {f.nodes for f in srcu}
    cycles = [f for f in _cycles(spec) if f.nodes not in both_ways]
    return cycles + _leaf(spec) + srcu + _forbidden(spec) + _types(spec)


def _nesting_edges(spec: Spec) -> dict[str, list[tuple[str, Rule]]]:
    """outer -> [(inner, rule)]: every nesting the document declares, SRCU read/sync included.

    SRCU's synchronize enters the SRCU node (``A -> S``) and its read side leaves it
    (``S -> B``), so a cycle through it is the classic "sync under A, A inside the read side".
    """
    out: dict[str, list[tuple[str, Rule]]] = {}
    for r in spec.rules:
        if r.kind == "order":
            out.setdefault(r.outer, []).append((r.inner, r))
        elif r.kind == "srcu_sync_inside":
            out.setdefault(r.outer, []).append((r.srcu, r))
        elif r.kind == "srcu_read_ok":
            out.setdefault(r.srcu, []).append((r.inner, r))
    return out


def _sccs(adj: dict[str, list[tuple[str, Rule]]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative): linear in rules, whatever the size."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on.add(node)
            succ = adj.get(node, [])
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i][0]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def _cycles(spec: Spec) -> list[Finding]:
    """One cycle per knot of declared orders: a shortest way back to its first lock."""
    adj = _nesting_edges(spec)
    found: list[Finding] = []
    for comp in _sccs(adj):
        members = set(comp)
        start = min(comp)
        self_loop = [r for n, r in adj.get(start, []) if n == start]
        if len(comp) == 1 and not self_loop:
            continue
        # BFS inside the component from start back to start
        prev: dict[str, tuple[str, Rule]] = {}
        queue = [start]
        back: tuple[str, Rule] | None = None
        for node in queue:
            for nxt, rule in adj.get(node, []):
                if nxt == start:
                    back = (node, rule)
                    break
                if nxt in members and nxt not in prev:
                    prev[nxt] = (node, rule)
                    queue.append(nxt)
            if back:
                break
        assert back is not None  # a strongly connected component has a cycle through start
        steps = [(start, back[1])]
        node = back[0]
        while node != start:
            p, rule = prev[node]
            steps.append((node, rule))
            node = p
        steps.reverse()
        names = [start] + [n for n, _ in steps]
        found.append(Finding(
            "cycle",
            "declared orders form a cycle: " + " -> ".join(names),
            tuple(sorted({r.line for _, r in steps})),
            frozenset(names),
        ))
    return found


def _leaf(spec: Spec) -> list[Finding]:
    leaves = {r.outer: r for r in spec.rules if r.kind == "leaf" and not r.note}
    out: list[Finding] = []
    for r in spec.rules:
        if r.kind in ("order", "requires", "srcu_sync_inside") and r.outer in leaves:
            inner = r.srcu if r.kind == "srcu_sync_inside" else r.inner
            out.append(Finding(
                "leaf",
                f"{r.outer} is declared a leaf (line {leaves[r.outer].line}) but line {r.line} "
                f"nests {inner} inside it",
                (leaves[r.outer].line, r.line),
            ))
    return out


def _srcu(spec: Spec) -> list[Finding]:
    sync = {(r.outer, r.srcu): r for r in spec.rules if r.kind == "srcu_sync_inside"}
    out: list[Finding] = []
    for r in spec.rules:
        if r.kind == "srcu_read_ok" and (r.inner, r.srcu) in sync:
            s = sync[(r.inner, r.srcu)]
            out.append(Finding(
                "srcu",
                f"line {s.line} calls synchronize_srcu({r.srcu}) inside {r.inner}, but line "
                f"{r.line} lets {r.inner} be taken inside its read side",
                (s.line, r.line),
                frozenset((r.inner, r.srcu)),
            ))
    return out


def _forbidden(spec: Spec) -> list[Finding]:
    orders = {(r.outer, r.inner): r for r in spec.rules if r.kind == "order"}
    out: list[Finding] = []
    for r in spec.rules:
        if r.kind == "forbidden" and (r.outer, r.inner) in orders:
            o = orders[(r.outer, r.inner)]
            out.append(Finding(
                "forbidden",
                f"line {o.line} takes {r.inner} inside {r.outer}, line {r.line} forbids it",
                (o.line, r.line),
            ))
    return out


def _types(spec: Spec) -> list[Finding]:
    out: list[Finding] = []
    for r in spec.rules:
        if r.kind != "type":
            continue
        e = spec.ref(r.outer)
        if e is not None and not set(r.types) & set(e.kinds):
            out.append(Finding(
                "type",
                f"line {r.line} says {r.outer} is a {'/'.join(r.types)}, its Reference entry "
                f"(line {e.line}) says {e.type_text}",
                (r.line, e.line),
            ))
    return out


def undeclared(spec: Spec) -> list[str]:
    """Locks the rules name that have no Reference entry (a gap, not a contradiction)."""
    refs = {e.name for e in spec.reference}
    return [n for n in spec.locks() if n not in refs]
