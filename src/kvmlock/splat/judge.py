"""Each dependency of a report, judged against a locking document's rules.

A dependency is one edge of lockdep's graph, so the checker that judges a whole run
(:func:`kvmlock.spec.check`) judges it too, on a graph of that one edge: a rule it breaks makes
it *violated*, a rule whose documented nesting it is makes it *conforms*, and an edge no rule
speaks of is *undocumented*. The same splat can get different verdicts from two versions of a
document, as the kernel's SRCU rule did when it was turned around.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kvmlock.spec.edges import judge_edge
from kvmlock.spec.graphview import Edge
from kvmlock.spec.model import Spec
from kvmlock.spec.names import NAME_RE, normalise
from kvmlock.splat.report import Dependency, Splat

#: how locking.rst itself names a lock when no document is given
DEFAULT_SPELLING = {"cpu_hotplug_lock": "cpus_read_lock()"}


def spelling(spec: Spec | None) -> Callable[[str], str]:
    """lockdep class -> the name as the document writes it.

    A document may write one lock several ways (its rules say ``kvm->arch.mmu_lock``, its
    Reference ``kvm->mmu_lock``): the way lockdep prints it wins when the document uses it too,
    else the rules' first spelling, else the Reference's.
    """
    table: dict[str, list[str]] = {}
    if spec is not None:
        texts = [r.text for r in spec.rules] + [e.spelled for e in spec.reference]
        for text in texts:
            for m in re.finditer(NAME_RE, text.replace("`", "")):
                word = m.group(0).lstrip("&")
                if "->" not in word and "::" not in word and "." not in word \
                        and not word.endswith("()") and "_" not in word:
                    continue  # plain English words are not lock names
                table.setdefault(normalise(word), []).append(word)

    def spell(name: str) -> str:
        words = table.get(name)
        if not words:
            return DEFAULT_SPELLING.get(name, name)
        return name if name in words else words[0]

    return spell


def judge(splat: Splat, spec: Spec) -> list[Dependency]:
    """The report's dependencies with ``verdict`` and ``rules`` filled in from ``spec``."""
    deps = splat.dependencies()
    for dep in deps:
        edge = Edge(dep.src, dep.dst, dep.src_read, dep.dst_read, dep.where)
        dep.verdict, results = judge_edge(spec, edge)
        dep.rules = [(r.rule.describe(), r.rule.line) for r in results]
    return deps
