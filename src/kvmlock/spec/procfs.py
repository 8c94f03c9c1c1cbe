"""A running kernel's lock graph, from ``/proc/lockdep`` and ``/proc/lockdep_chains`` dumps.

``/proc/lockdep`` lists every lock class with its usage bits and, under it, the classes taken
while it was held (``-> [key] name``, direct dependencies only); ``/proc/lockdep_chains`` lists
each distinct stack of held locks. Neither records whether an acquisition was a read, so an edge
into an SRCU class could be a reader or a ``synchronize_srcu``: those edges are read with an
unknown mode, and the SRCU rules they decide come out *unchecked*, never held. Class kinds are not
in the dump either; type checks on such a graph are unchecked too.

The writers make dumps of the same format from any graph (the model's, for tests and demos).
"""

from __future__ import annotations

import os
import re
from typing import Any

from kvmlock.spec.check import UNKNOWN_KIND
from kvmlock.spec.graphview import Edge, GraphView, view
from kvmlock.spec.inputs import read_text
from kvmlock.spec.model import SpecError
from kvmlock.spec.names import kind_of
from kvmlock.splat.report import lock_class

_CLASS = re.compile(
    r"^(?P<key>[0-9a-fx]+)(?: OPS:\s*\d+)?(?: FD:\s*\d+ BD:\s*\d+(?: (?P<usage>[.+?\-]+))?)?: "
    r"(?P<name>\S.*)$"
)
_DEP = re.compile(r"^ -> \[(?P<key>[0-9a-fx]+)\] (?P<name>\S.*)$")
_CHAIN_LOCK = re.compile(r"^\[(?P<key>[0-9a-fx]+)\] (?P<name>\S.*)$")
MAX_BYTES = 256 * 1024 * 1024


def _text(path: str | os.PathLike[str], what: str) -> str:
    return read_text(path, f"{what} dump", MAX_BYTES, lenient=True)


def _name(raw: str) -> str:
    return lock_class(raw.strip())


def read_proc_lockdep(text: str, source: str = "/proc/lockdep") -> GraphView:
    """Classes and direct dependencies of a ``/proc/lockdep`` dump."""
    classes: dict[str, str] = {}
    usage: dict[str, str] = {}
    edges: dict[tuple[str, str], Edge] = {}
    cur = ""
    seen = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("all lock classes"):
            continue
        if m := _DEP.match(line):
            if not cur:
                raise SpecError("a dependency line before any lock class", n, source)
            dst = _name(m["name"])
            if dst != cur:
                read = -1 if kind_of(dst) == "srcu" or dst.endswith("srcu") else 0
                src_read = 2 if kind_of(cur) == "srcu" or cur.endswith("srcu") else 0
                edges.setdefault((cur, dst), Edge(cur, dst, src_read, read, ""))
            continue
        if m := _CLASS.match(line):
            cur = _name(m["name"])
            classes.setdefault(cur, UNKNOWN_KIND)
            usage[cur] = m["usage"] or ""
            seen += 1
            continue
        raise SpecError(f"not a /proc/lockdep line: {line.strip()[:80]!r}", n, source)
    if not seen:
        raise SpecError("no lock classes found; is this a /proc/lockdep dump?", None, source)
    return GraphView(classes, list(edges.values()))


def read_proc_chains(text: str, source: str = "/proc/lockdep_chains") -> list[tuple[str, ...]]:
    """The held-lock stacks of a ``/proc/lockdep_chains`` dump (outermost first)."""
    chains: list[tuple[str, ...]] = []
    cur: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("irq_context:") or not s:
            if cur:
                chains.append(tuple(cur))
                cur = []
            continue
        if s.startswith("all lock chains"):
            continue
        m = _CHAIN_LOCK.match(s)
        if not m:
            raise SpecError(f"not a /proc/lockdep_chains line: {s[:80]!r}", n, source)
        if m["name"] != "(null)":
            cur.append(_name(m["name"]))
    if cur:
        chains.append(tuple(cur))
    return chains


def load_proc(lockdep: str | os.PathLike[str],
              chains: str | os.PathLike[str] | None = None) -> GraphView:
    g = read_proc_lockdep(_text(lockdep, "/proc/lockdep"), str(lockdep))
    if chains is not None:
        held = read_proc_chains(_text(chains, "/proc/lockdep_chains"), str(chains))
        if not held and g.edges:
            # a kernel that recorded dependencies recorded the chains they came from: an empty
            # dump would make every "only taken with X held" rule look merely not exercised
            raise SpecError(f"no lock chains found, though {lockdep} has {len(g.edges)} "
                            "dependencies; is this a /proc/lockdep_chains dump?", None,
                            str(chains))
        g = GraphView(g.classes, g.edges, held)
    return g


# --------------------------------------------------------------------------- writers


def _key(i: int) -> str:
    return f"ffffffff{0x82000000 + 0x10 * i:08x}"


def _kernel_name(name: str) -> str:
    """How lockdep prints a class the document names ``kvm->lock``: ``&kvm->lock``."""
    return f"&{name}" if "->" in name else name


def write_proc_lockdep(graph: Any) -> str:
    """A ``/proc/lockdep`` dump, in the kernel's format, of any graph."""
    g = view(graph)
    names = sorted(set(g.classes) | {e.src for e in g.edges} | {e.dst for e in g.edges})
    key = {n: _key(i) for i, n in enumerate(names)}
    out = ["all lock classes:"]
    for n in names:
        deps = sorted({e.dst for e in g.out(n)})
        back = sum(1 for e in g.edges if e.dst == n)
        out.append(f"{key[n]} FD:{len(deps) + 1:5d} BD:{back + 1:5d} +.+.: {_kernel_name(n)}")
        out += [f" -> [{key[d]}] {_kernel_name(d)}" for d in deps]
        out.append("")
    return "\n".join(out) + "\n"


def write_proc_chains(graph: Any) -> str:
    """A ``/proc/lockdep_chains`` dump of a graph that records its held-lock chains."""
    g = view(graph)
    names = sorted(set(g.classes) | {n for c in g.chains or () for n in c})
    key = {n: _key(i) for i, n in enumerate(names)}
    out = ["all lock chains:"]
    for c in g.chains or ():
        out.append("irq_context: 0")
        out += [f"[{key[n]}] {_kernel_name(n)}" for n in c]
        out.append("")
    return "\n".join(out) + "\n"
