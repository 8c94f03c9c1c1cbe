"""Check a dependency graph against a document's rules: held, violated or not exercised.

A rule is only as good as the run that exercised it, so every result says which: *held* means
the run did what the rule is about (the documented nesting was seen) and never the forbidden
thing; *not exercised* means the run never came near it, which is not the same as conforming.
A violation names the offending dependency path and the file:line in the user's code where each
step was first seen, so the finding can be acted on without re-running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmlock.spec.graphview import Edge, GraphView, view
from kvmlock.spec.model import RefEntry, Rule, Spec, Unread
from kvmlock.spec.names import SPECIAL_KINDS, kind_of
from kvmlock.spec.protects import ProtectsResult, check_protects

HELD, VIOLATED, NOT_EXERCISED, UNCHECKED = "held", "violated", "not exercised", "unchecked"
#: a violation the user has accepted, with a reason (``--accept``): shown, not failed on
ACCEPTED = "accepted"


@dataclass
class RuleResult:
    rule: Rule
    status: str
    path: list[Edge] = field(default_factory=list)  # offending path, or the evidence it held
    detail: str = ""
    accepted: str = ""  # the reason a known violation was accepted

    @property
    def where(self) -> str:
        return ", ".join(e.where for e in self.path if e.where)


@dataclass
class TypeResult:
    entry: RefEntry
    actual: str | None  # the kind lockdep recorded, None if the run never built the lock
    status: str
    accepted: str = ""


@dataclass
class Conformance:
    """The verdict of one document against one graph."""

    source: str
    results: list[RuleResult] = field(default_factory=list)
    types: list[TypeResult] = field(default_factory=list)
    protects: list[ProtectsResult] = field(default_factory=list)
    undocumented: list[tuple[str, str]] = field(default_factory=list)  # (class, kind)
    not_understood: list[Unread] = field(default_factory=list)
    arch: str | None = None
    #: why the verdict cannot be OK even without a violation (see ``Spec.incomplete``)
    incomplete: list[str] = field(default_factory=list)
    #: for a kernel's graph: dependencies between documented locks that no rule speaks of
    unmentioned: list[Edge] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def ok(self) -> bool:
        """No rule or Protects item violated, every documented lock the run built has its
        documented kind, and the whole document was read: what could not be read is never
        reported as conforming."""
        return (not self.violations and all(t.status != VIOLATED for t in self.types)
                and all(p.status != VIOLATED for p in self.protects) and self.complete)

    @property
    def violations(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == VIOLATED]

    def counts(self) -> dict[str, int]:
        out = {HELD: 0, VIOLATED: 0, NOT_EXERCISED: 0, UNCHECKED: 0, ACCEPTED: 0}
        for r in [*self.results, *self.protects]:
            out[r.status] += 1
        return out

    def render(self, width: int = 120) -> str:
        """The conformance table as plain text (rich tables, no colour)."""
        from kvmlock.spec.render import render_conformance

        return render_conformance(self, width=width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "complete": self.complete,
            "incomplete": list(self.incomplete),
            "counts": self.counts(),
            "rules": [
                {
                    "rule": r.rule.describe(),
                    "kind": r.rule.kind,
                    "line": r.rule.line,
                    "status": r.status,
                    "path": [e.show() for e in r.path],
                    "where": [e.where for e in r.path],
                    "detail": r.detail,
                    "accepted": r.accepted or None,
                }
                for r in self.results
            ],
            "types": [
                {"lock": t.entry.name, "documented": list(t.entry.kinds), "actual": t.actual,
                 "status": t.status, "accepted": t.accepted or None}
                for t in self.types
            ],
            "protects": [
                {"lock": p.entry.name, "line": p.entry.line, "protects": p.item,
                 "status": p.status, "data": p.data, "detail": p.detail, "where": p.where}
                for p in self.protects
            ],
            "undocumented": [{"lock": n, "kind": k} for n, k in self.undocumented],
            "unmentioned_dependencies": [e.show() for e in self.unmentioned],
            "not_understood": [{"line": u.line, "text": u.text, "rule_like": bool(u.names)}
                               for u in self.not_understood],
        }


def check(spec: Spec, graph: Any, *, arch: str | None = None,
          reasons: dict[tuple[str, str], str] | None = None) -> Conformance:
    """Check ``graph`` (a lockdep ``DepGraph``, a saved graph or its path) against ``spec``.

    ``arch`` limits the check to rules for that architecture plus the general ones; by default
    every rule applies (the model is x86). ``reasons`` says, per ``(lock, Protects item)``, why
    the program declares no data for that item (see :func:`check_protects`).
    """
    if not isinstance(spec, Spec):
        raise TypeError(f"check() needs a Spec from spec.load(), not {type(spec).__name__}")
    g = view(graph)
    declared = spec.declared_kinds()
    conf = Conformance(source=spec.source, not_understood=list(spec.not_understood), arch=arch,
                       incomplete=spec.incomplete())
    for rule in spec.rules:
        if arch and rule.arch and rule.arch != arch:
            continue
        res = _check_rule(rule, g, declared)
        conf.results.append(res)
        if res.status == UNCHECKED and rule.kind != "same_class":
            # a rule the graph cannot decide is not a rule that held
            conf.incomplete.append(f"line {rule.line}: '{rule.describe()}' could not be checked "
                                   f"on this graph ({res.detail})")
    judged = [r for r in conf.results if r.rule.kind not in ("type", "same_class")]
    if judged and not any(r.status in (HELD, VIOLATED) for r in judged):
        # every rule "not exercised" (or unchecked): the graph never came near the document's
        # locks (another program, or another spelling of the names), so nothing was checked
        conf.incomplete.append(f"none of the {len(judged)} rule(s) was exercised by the graph: "
                               "it never takes the document's locks in the orders the rules "
                               "speak of, so nothing was checked")
    for rule in implied_orders(spec, arch):
        bad = g.path_between(rule.inner, rule.outer)
        if bad:  # an implied order is reported only when broken: it adds no evidence otherwise
            conf.results.append(RuleResult(rule, VIOLATED, bad,
                                           f"{rule.inner} is held when taking {rule.outer}"))
    for entry in spec.reference:
        actual = g.classes.get(entry.name)
        if actual is None:
            status = NOT_EXERCISED
        elif actual == UNKNOWN_KIND:
            status = UNCHECKED
        else:
            status = HELD if actual in entry.kinds else VIOLATED
        conf.types.append(TypeResult(entry, actual, status))
    conf.protects = check_protects(spec.reference, g.protected, reasons)
    documented = set(spec.locks())
    # the RCU read side (kind "rcu") is the one pseudo-lock every RCU reader of every program
    # holds, not a lock of the program's: a document speaks of it only through what it protects
    conf.undocumented = sorted((n, k) for n, k in g.classes.items()
                               if n not in documented and k != "rcu")
    return conf


#: the kind of a class whose kind the graph does not know (a /proc/lockdep dump)
UNKNOWN_KIND = "?"


def _known(kind: str | None) -> str | None:
    return None if kind == UNKNOWN_KIND else kind


def implied_orders(spec: Spec, arch: str | None = None) -> list[Rule]:
    """Orders the document states only as a chain ("A outside B", "B outside C": A outside C).

    A run that takes A inside C breaks the chain even if it never takes B: the check needs the
    document's closure, not only the graph's paths.
    """
    after: dict[str, list[Rule]] = {}
    stated = set()
    for r in spec.rules:
        if r.kind == "order" and not (arch and r.arch and r.arch != arch):
            after.setdefault(r.outer, []).append(r)
            stated.add((r.outer, r.inner))
    out: list[Rule] = []
    for start in after:
        seen: dict[str, list[Rule]] = {}
        stack = [(r.inner, [r]) for r in after[start]]
        while stack:
            node, via = stack.pop()
            if node in seen or node == start:
                continue
            seen[node] = via
            stack += [(r.inner, [*via, r]) for r in after.get(node, ())]
        for node, via in seen.items():
            if len(via) > 1 and (start, node) not in stated:
                lines = ", ".join(str(r.line) for r in via)
                out.append(Rule("order", start, inner=node, note=f"implied by lines {lines}",
                                arch=next((r.arch for r in via if r.arch), ""),
                                line=via[0].line, text=f"(implied by lines {lines})"))
    return out


def _is_write(e: Edge) -> bool:
    return e.dst_read == 0


def _maybe_write(e: Edge) -> bool:
    """An acquisition whose mode the graph does not record (``dst_read`` -1)."""
    return e.dst_read == -1


def _read_side(g: GraphView, srcu: str) -> list[Edge]:
    """The steps that leave ``srcu`` as a reader: locks taken inside its read side."""
    return [e for e in g.out(srcu) if e.src_read != 0]


def _check_rule(rule: Rule, g: GraphView, declared: dict[str, tuple[str, ...]]) -> RuleResult:
    k = rule.kind
    if k == "order":
        bad = g.path_between(rule.inner, rule.outer)
        if bad:
            return RuleResult(rule, VIOLATED, bad, f"{rule.inner} is held when taking {rule.outer}")
        seen = g.path_between(rule.outer, rule.inner)
        return RuleResult(rule, HELD, seen) if seen else RuleResult(rule, NOT_EXERCISED)
    if k == "forbidden":
        bad = g.path_between(rule.outer, rule.inner)
        if bad:
            return RuleResult(rule, VIOLATED, bad, f"{rule.inner} is taken inside {rule.outer}")
        return _exercised(rule, g, rule.outer)
    if k == "srcu_sync_inside":
        bad = g.path(_read_side(g, rule.srcu), rule.outer)
        if bad:
            return RuleResult(
                rule, VIOLATED, bad,
                f"{rule.outer} is taken inside a {rule.srcu} read-side critical section",
            )
        seen = g.path_between(rule.outer, rule.srcu, _is_write)
        if not seen and g.path_between(rule.outer, rule.srcu, _maybe_write):
            return RuleResult(rule, UNCHECKED, detail=_UNKNOWN_MODE)
        return RuleResult(rule, HELD, seen) if seen else RuleResult(rule, NOT_EXERCISED)
    if k == "srcu_read_ok":
        bad = g.path_between(rule.inner, rule.srcu, _is_write)
        if bad:
            return RuleResult(
                rule, VIOLATED, bad, f"synchronize_srcu({rule.srcu}) is called under {rule.inner}"
            )
        if g.path_between(rule.inner, rule.srcu, _maybe_write):
            return RuleResult(rule, UNCHECKED, detail=_UNKNOWN_MODE)
        seen = g.path(_read_side(g, rule.srcu), rule.inner)
        return RuleResult(rule, HELD, seen) if seen else RuleResult(rule, NOT_EXERCISED)
    if k == "leaf":
        for e in g.out(rule.outer):
            dst_kind = _known(g.classes.get(e.dst)) or kind_of(e.dst, declared)
            if dst_kind not in SPECIAL_KINDS:
                return RuleResult(rule, VIOLATED, [e], f"{e.dst} is taken inside {rule.outer}")
        return _exercised(rule, g, rule.outer)
    if k == "type":
        actual = g.classes.get(rule.outer)
        if actual is None:
            return RuleResult(rule, NOT_EXERCISED)
        if actual == UNKNOWN_KIND:
            return RuleResult(rule, UNCHECKED, detail="the graph does not record lock kinds")
        if actual in rule.types:
            return RuleResult(rule, HELD, detail=f"lockdep kind {actual}")
        return RuleResult(rule, VIOLATED, detail=f"the run's {rule.outer} is a {actual}")
    if k == "requires":
        return _check_requires(rule, g)
    if k == "same_class":
        return RuleResult(rule, UNCHECKED, detail="a class graph folds both locks into one node")
    raise ValueError(f"unknown rule kind {k!r}")


_UNKNOWN_MODE = ("the graph does not say whether the SRCU was entered as a reader or "
                 "synchronized (a /proc/lockdep dump records no dependency modes)")


def _exercised(rule: Rule, g: GraphView, name: str) -> RuleResult:
    used = name in g.classes or any(e.dst == name or e.src == name for e in g.edges)
    return RuleResult(rule, HELD) if used else RuleResult(rule, NOT_EXERCISED)


def _check_requires(rule: Rule, g: GraphView) -> RuleResult:
    """"inner cannot be taken without holding outer": needs the held-lock chains of the run."""
    if g.chains is None:
        return RuleResult(
            rule, UNCHECKED,
            detail="the graph records no held-lock chains; only the order part is checked",
        )
    exercised = False
    for chain in g.chains:
        if chain and chain[-1] == rule.inner:
            if rule.outer not in chain[:-1]:
                held = ", ".join(chain[:-1]) or "nothing"
                return RuleResult(rule, VIOLATED,
                                  detail=f"{rule.inner} taken holding {held}")
            exercised = True
    return RuleResult(rule, HELD if exercised else NOT_EXERCISED)
