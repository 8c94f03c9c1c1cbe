"""What changed between two versions of a document, and what each change means for a graph.

The kernel's document changes a little each release and once turned a rule around (2023: kvm->lock
went from "taken inside the kvm->srcu read side" to "synchronize_srcu is called under it"). A
reviewer of such a patch wants the rule changes, not the text diff, and for each the dependency
that starts (or stops) being a violation. Given a graph, the diff also says which rules' verdicts
on that graph change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmlock.spec.check import Conformance, check
from kvmlock.spec.model import Rule, Spec


def _opposite(r: Rule) -> tuple[str, str, str, str] | None:
    """The key of the rule that says the reverse of ``r``."""
    if r.kind == "order":
        return ("order", r.inner, r.outer, "")
    if r.kind == "srcu_sync_inside":
        return ("srcu_read_ok", r.srcu, r.outer, r.srcu)
    if r.kind == "srcu_read_ok":
        return ("srcu_sync_inside", r.inner, "", r.srcu)
    return None


@dataclass
class Change:
    kind: str  # "added" | "removed" | "reversed"
    old: Rule | None
    new: Rule | None
    meaning: str
    verdicts: tuple[str, str] | None = None  # (old, new) status on a given graph

    def to_dict(self) -> dict[str, Any]:
        return {
            "change": self.kind,
            "old": self.old.describe() if self.old else None,
            "old_line": self.old.line if self.old else None,
            "new": self.new.describe() if self.new else None,
            "new_line": self.new.line if self.new else None,
            "meaning": self.meaning,
            "verdicts": list(self.verdicts) if self.verdicts else None,
        }


@dataclass
class SpecDiff:
    old: Spec
    new: Spec
    changes: list[Change] = field(default_factory=list)

    @property
    def incomplete(self) -> list[str]:
        """Why the list of changes may be short: a version not read whole hides its changes."""
        return [f"{d.source}: {why}" for d in (self.old, self.new) for why in d.incomplete()]

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old.source, "new": self.new.source,
                "complete": not self.incomplete, "incomplete": self.incomplete,
                "changes": [c.to_dict() for c in self.changes]}


def _means(when: str, r: Rule) -> str:
    if edge := r.breaks():
        return f"{when} a violation: {edge}"
    return (f"{when} said, but no lock graph can show it: one lock class nested in itself "
            "(lockdep checks the nesting annotation)")


def diff(old: Spec, new: Spec, graph: Any = None) -> SpecDiff:
    """The rule changes from ``old`` to ``new``; with ``graph``, each one's verdict on it."""
    before = {r.key: r for r in old.rules}
    after = {r.key: r for r in new.rules}
    out = SpecDiff(old, new)
    paired: set[tuple[str, str, str, str]] = set()
    for key, r in before.items():
        if key in after:
            continue
        opp = _opposite(r)
        if opp is not None and opp in after and opp not in before:
            n = after[opp]
            paired |= {key, opp}
            out.changes.append(Change(
                "reversed", r, n,
                f"{_means('now', n)}; {_means('no longer', r)}"))
    for key, r in before.items():
        if key not in after and key not in paired:
            out.changes.append(Change("removed", r, None, _means("no longer", r)))
    for key, r in after.items():
        if key not in before and key not in paired:
            out.changes.append(Change("added", None, r, _means("now", r)))
    if graph is not None:
        _verdicts(out, check(old, graph), check(new, graph))
    return out


def _verdicts(d: SpecDiff, a: Conformance, b: Conformance) -> None:
    sa = {r.rule.key: r.status for r in a.results}
    sb = {r.rule.key: r.status for r in b.results}
    for c in d.changes:
        d_old = sa.get(c.old.key, "-") if c.old else "-"
        d_new = sb.get(c.new.key, "-") if c.new else "-"
        c.verdicts = (d_old, d_new)
