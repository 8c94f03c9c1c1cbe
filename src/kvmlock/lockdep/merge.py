"""Joining the dependency graphs of separate processes, as one run would have built them.

A test suite split over processes (pytest-xdist workers) builds one graph per process, so test
A taking X then Y in one worker and test B taking Y then X in another is an inversion no
worker sees, though a serial run reports it. Classes are what an order is about, and a class
is the same in every process that builds it from the same code: its key is the creation
site (file, line, column) of a plain threading lock, the name of a kvmlock primitive. So
:func:`export` writes a graph out by class key, and :func:`merge` adds the parts' links to one
graph with the same strong-path search lockdep runs on every new dependency: a link that
closes a cycle is reported (once per set of classes, and not again when a part already
reported that cycle itself), in the usual splat, saying which part and which test made each
dependency.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from kvmlock.lockdep.graph import Link, LockClass, dep_bit, find_cycle_path, path_edges
from kvmlock.lockdep.report import Edge, HeldLock, Report
from kvmlock.lockdep.state import State, _GraphLock, _reentered

#: One link kind as exported: src class, dst class, src read, dst read (-1: a synchronize()),
#: where it was first made, its call path, the test (or other origin) that made it.
ExportedLink = tuple[str, str, int, int, str, list[str], str]


def class_id(cls: LockClass) -> str:
    """A class's identity across processes: its key and subclass where they are plain data
    (creation sites, names), else its name and kind."""
    try:
        return json.dumps([cls.key, cls.subclass])
    except (TypeError, ValueError):
        return json.dumps(["name", cls.name, cls.kind])


def export(S: State, origins: dict[tuple[int, tuple[int, int]], str] | None = None
           ) -> dict[str, Any]:
    """State ``S``'s graph as plain data (JSON-able) for :func:`merge`; ``origins`` maps
    ``(id(link), kind key)`` to the test that made that kind of the link."""
    origins = origins or {}
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        classes = {class_id(c): [c.name, kind] for c, kind in S.classes.items()}
        links: list[ExportedLink] = []
        for c, after in list(S.after.items()):
            for link in list(after.values()):
                for k, where in list(link.sites.items()):
                    links.append((class_id(c), class_id(link.dst), k[0], k[1], str(where),
                                  list(link.stacks.get(k, ())), origins.get((id(link), k), "")))
        cycles = [sorted({e.src for e in r.chain}) for r in S.reports if r.kind == "circular"
                  and not r.lock.endswith("]")]  # (instance-level cycles stay in-process)
    return {"classes": classes, "links": links, "cycles": cycles}


def origins_of(S: State, into: dict[tuple[int, tuple[int, int]], str], origin: str) -> None:
    """Attribute every link kind of ``S`` not attributed yet to ``origin`` (called after each
    test that added dependencies, with the test's id)."""
    with contextlib.nullcontext() if _reentered(S) else _GraphLock(S):
        for after in list(S.after.values()):
            for link in list(after.values()):
                for k in list(link.sites):
                    into.setdefault((id(link), k), origin)


def merge(parts: list[tuple[str, dict[str, Any]]]) -> list[Report]:
    """Join the exported graphs ``parts`` (label, export) and report every cycle that only
    their union closes."""
    classes: dict[str, LockClass] = {}
    after: dict[LockClass, dict[LockClass, Link]] = {}
    made_by: dict[tuple, str] = {}  # (src, dst, src_read, dst_read, sync) -> "label (test)"
    seen: set[frozenset[str]] = set()
    for _label, part in parts:
        ids = {name: cid for cid, (name, _kind) in part["classes"].items()}
        for cycle in part["cycles"]:
            seen.add(frozenset(ids.get(n, n) for n in cycle))
    found: list[Report] = []
    for label, part in parts:
        for cid, (name, kind) in part["classes"].items():
            if cid not in classes:
                classes[cid] = LockClass(name, kind, cid, 0, len(classes))
        for src, dst, sr, dr, where, stack, origin in part["links"]:
            p, n = classes[src], classes[dst]
            sync, read = dr == -1, max(dr, 0)
            who = f"{label} ({origin})" if origin else label
            link = after.get(p, {}).get(n)
            if link is not None and link.dep & dep_bit(sr, read):
                continue
            path = find_cycle_path(after, n, read == 2, p, sr == 0)
            if path is None:
                if link is None:
                    link = after.setdefault(p, {})[n] = Link(p, n)
                link.add(sr, read, where, sync, tuple(stack))
                made_by.setdefault((p.name, n.name, sr, read, sync), who)
                continue
            new = Edge(p.name, n.name, sr, read, where, sync, tuple(stack))
            chain = [*path_edges(path, read == 2), new]
            key = frozenset(step.src.key for step in path) | {p.key}
            if key in seen:
                continue
            seen.add(key)
            made_by.setdefault((p.name, n.name, sr, read, sync), who)
            steps = [f"#{d}: {made_by.get((e.src, e.dst, e.src_read, e.dst_read, e.sync), '?')}"
                     for d, e in [(0, new)] + [(i + 1, e) for i, e in enumerate(chain[:-1])]]
            found.append(Report(
                "circular", lock=n.name, held=p.name, lock_read=read, held_read=sr,
                task=who, where=where, chain=chain, held_locks=[HeldLock(p.name, sr, "")],
                what="The dependencies were made in separate processes, which no process saw "
                     "together; made by " + ", ".join(steps) + ".",
            ))
    return found
