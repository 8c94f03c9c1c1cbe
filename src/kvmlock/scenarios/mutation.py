"""``kvmlock verify --mutants``: every protection of the model must be missed by some scenario.

Each mutant of :data:`kvmlock.kvm.mutants.CATALOGUE` is applied on its own, and the *correct*
scenarios are explored against the weakened model until one fails -- by a failed invariant, a
deadlock, a hang or a lockdep report. That scenario *caught* the mutant. A mutant that every
correct scenario still passes is *missed*: the protection it removes is one the verdicts of
``kvmlock verify`` say nothing about, and the run exits non-zero.

Scenarios that name a mutant in their ``catches`` are tried first (they were written for it);
the others follow in registry order, so a mutant caught elsewhere is reported there.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmlock.kvm.mutants import CATALOGUE, Mutant, applied
from kvmlock.scenarios.registry import SCENARIOS, Scenario

__all__ = ["Verdict", "hunt", "hunt_all", "select_mutants"]


@dataclass
class Verdict:
    """What became of one mutant."""

    mutant: Mutant
    status: str  # "caught" | "MISSED" | "pending"
    scenario: str = ""
    how: str = ""
    tried: int = 0
    seconds: float = 0.0

    @property
    def caught(self) -> bool:
        return self.status == "caught"

    def to_dict(self) -> dict[str, Any]:
        m = self.mutant
        return {"mutant": m.name, "removes": m.removes, "breaks": m.breaks, "where": m.where,
                "status": self.status, "scenario": self.scenario, "how": self.how,
                "pending": m.pending, "scenarios_tried": self.tried,
                "seconds": round(self.seconds, 3)}


def select_mutants(names: Iterable[str]) -> list[Mutant]:
    """Mutants by exact name or glob; none given means the whole catalogue."""
    import kvmlock.scenarios  # noqa: F401 - importing the scenarios imports every model module

    names = list(names)
    if not names:
        return list(CATALOGUE.values())
    out: dict[str, Mutant] = {}
    for n in names:
        hits = [m for k, m in CATALOGUE.items() if k == n or fnmatch.fnmatchcase(k, n)]
        if not hits:
            raise ValueError(f"no mutant named {n!r} (`kvmlock verify --mutants --list` shows "
                             f"all {len(CATALOGUE)})")
        for m in hits:
            out.setdefault(m.name, m)
    return list(out.values())


def _candidates(m: Mutant) -> list[Scenario]:
    correct = [s for s in SCENARIOS.values() if s.variant == "correct" and s.expect == "pass"]
    return ([s for s in correct if m.name in s.catches]
            + [s for s in correct if m.name not in s.catches])


def _how(out: Any) -> str:
    """The failure in a few words: its kind, and the first line of its message."""
    f = out.failure
    kind = out.result.removeprefix("FAILED: ")
    msg = str(getattr(f, "message", "") or "").strip().splitlines()
    first = next((line.strip() for line in msg if any(c.isalpha() for c in line)), "")
    first = first.removeprefix("AssertionError: ").rstrip(":")
    if len(first) > 110:
        first = first[:107] + "..."
    return f"{kind}: {first}" if first else kind


def hunt(m: Mutant, *, timeout: float | None = None) -> Verdict:
    """Apply ``m`` and explore correct scenarios until one fails."""
    from kvmlock.scenarios.verify import run_scenario

    if m.pending:
        return Verdict(m, "pending", how=m.pending)
    t0 = time.perf_counter()
    tried = 0
    cut: list[str] = []
    with applied(m):
        for sc in _candidates(m):
            tried += 1
            out = run_scenario(sc, timeout=timeout)
            if out.failure is not None:
                return Verdict(m, "caught", sc.name, _how(out), tried, time.perf_counter() - t0)
            if not out.complete:
                cut.append(sc.name)
    how = "every correct scenario still passes"
    if cut:
        more = "..." if len(cut) > 3 else ""
        how += f" ({len(cut)} cut short by --timeout: {', '.join(cut[:3])}{more})"
    return Verdict(m, "MISSED", how=how, tried=tried, seconds=time.perf_counter() - t0)


def hunt_all(mutants: Sequence[Mutant], *, timeout: float | None = None) -> list[Verdict]:
    return [hunt(m, timeout=timeout) for m in mutants]


def table(verdicts: Sequence[Verdict], width: int = 150) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title="kvmlock verify --mutants", title_justify="left",
              box=box.SIMPLE_HEAD if width < 120 else box.HEAVY_HEAD,
              caption="a mutant is caught when a correct scenario fails with it applied",
              caption_justify="left")
    t.add_column("mutant", overflow="fold", no_wrap=False, min_width=18)
    t.add_column("rule or hazard it breaks", overflow="fold", ratio=3)
    t.add_column("caught by", overflow="fold", ratio=2)
    t.add_column("how", overflow="fold", ratio=3)
    for v in verdicts:
        colour = {"caught": "green", "pending": "yellow"}.get(v.status, "bold red")
        scen = v.scenario if v.caught else f"[{colour}]{v.status}[/]"
        t.add_row(f"[bold]{v.mutant.name}[/]\n[dim]{v.mutant.removes}[/]", v.mutant.breaks,
                  scen, f"[{colour}]{v.how}[/]")
    return t


def summary(verdicts: Sequence[Verdict], seconds: float) -> str:
    caught = sum(v.caught for v in verdicts)
    pending = sum(v.status == "pending" for v in verdicts)
    applicable = len(verdicts) - pending
    text = f"{caught}/{applicable} mutants caught in {seconds:.1f}s"
    if pending:
        text += f"; {pending} pending (declared, not applied: see their reason)"
    return text
