"""One dependency at a time: does the document forbid it, document it, or say nothing?

A kernel splat states a handful of dependencies and ``/proc/lockdep`` lists thousands; for both
the useful question is per edge, so the checker is run on a graph of that one edge. A rule it
breaks makes it *violated*; a rule whose documented nesting it is makes it *conforms* (a leaf or
"must not take" rule that is merely not broken does not count); anything else is
*undocumented*.
"""

from __future__ import annotations

from kvmlock.spec.check import HELD, VIOLATED, RuleResult, check
from kvmlock.spec.graphview import Edge, GraphView
from kvmlock.spec.model import Spec
from kvmlock.spec.names import kind_of

EDGE_VIOLATED, CONFORMS, UNDOCUMENTED = "violated", "conforms", "undocumented"


def judge_edge(spec: Spec, edge: Edge) -> tuple[str, list[RuleResult]]:
    """The edge's verdict and the rule results behind it."""
    if edge.src == edge.dst:
        return UNDOCUMENTED, []  # two locks of one class: the rules are about classes
    declared = spec.declared_kinds()
    classes = {n: k for n in (edge.src, edge.dst) if (k := kind_of(n, declared))}
    conf = check(spec, GraphView(classes, [edge]))
    bad = [r for r in conf.results if r.status == VIOLATED]
    if bad:
        return EDGE_VIOLATED, bad
    good = [r for r in conf.results if r.status == HELD and r.path]
    if good:
        return CONFORMS, good
    return UNDOCUMENTED, []
