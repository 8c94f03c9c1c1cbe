"""A report as text and as JSON: what ``kvmlock splat`` prints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmlock.splat.kinds import BY_ID
from kvmlock.splat.program import Outcome
from kvmlock.splat.report import (
    Dependency,
    LockRef,
    Splat,
    decode_wait,
    to_json_lock,
    usage_summary,
)


def _dep_text(d: Dependency, spell: Callable[[str], str]) -> str:
    return f"{spell(d.src)} -> {spell(d.dst)}"


def _mode(read: int, sync: bool) -> str:
    return "synchronize" if sync else {0: "write", 1: "read", 2: "recursive read"}.get(read, "")


def violations(deps: list[Dependency], spell: Callable[[str], str]) -> list[str]:
    return list(dict.fromkeys(_dep_text(d, spell) for d in deps if d.verdict == "violated"))


def to_dict(sp: Splat, deps: list[Dependency], spell: Callable[[str], str],
            outcome: Outcome | None = None) -> dict[str, Any]:
    four = sp.four_level_waits
    out: dict[str, Any] = {
        "kind": sp.kind,
        "title": sp.title,
        "line": sp.line,
        "task": sp.task,
        "acquiring": spell(sp.acquiring.name) if sp.acquiring else None,
        "holding": [spell(r.name) for r in sp.holding],
        "held": spell(sp.held.name) if sp.held else None,
        "locks": {
            "acquiring": to_json_lock(sp.acquiring, spell, four) if sp.acquiring else None,
            "holding": [to_json_lock(r, spell, four) for r in sp.holding],
        },
        "chain": [
            {"index": lk.index, "lock": spell(lk.lock.name), "lockdep": lk.lock.raw,
             "usage": lk.lock.usage, "wait": lk.lock.wait, "sync": lk.lock.sync,
             "read": lk.lock.read, "where": lk.where, "stack": lk.stack}
            for lk in sorted(sp.chain, key=lambda lk: -lk.index)
        ],
        "dependencies": [
            {"edge": _dep_text(d, spell), "from": spell(d.src), "to": spell(d.dst),
             "from_mode": _mode(d.src_read, False), "to_mode": _mode(d.dst_read, d.sync),
             "sync": d.sync, "origin": d.origin, "where": d.where, "verdict": d.verdict or None,
             "rules": [{"rule": r, "line": ln} for r, ln in d.rules]}
            for d in deps
        ],
        "violations": violations(deps, spell),
        "scenario": sp.scenario,
        "details": sp.details,
        "complete": not sp.problems,
        "problems": sp.problems,
    }
    if outcome is not None:
        out["explore"] = outcome.to_dict()
    return out


def _lock_line(ref: LockRef, spell: Callable[[str], str], four: bool) -> str:
    parts = [spell(ref.name)]
    if ref.raw.lstrip("&") != spell(ref.name):
        parts.append(f"(lockdep: {ref.raw})")
    if ref.usage:
        parts.append(f"{{{ref.usage}}} {usage_summary(ref.usage)}")
    if ref.wait:
        parts.append(f"{{{ref.wait}}} {decode_wait(ref.wait, four)}")
    if ref.sync or ref.read:
        parts.append(f"[{_mode(ref.read, ref.sync)}]")
    if ref.at:
        parts.append(f"at {ref.at}")
    return "  ".join(parts)


def render(sp: Splat, deps: list[Dependency], spell: Callable[[str], str],
           outcome: Outcome | None = None, stacks: bool = False, judged: bool = False) -> str:
    four = sp.four_level_waits
    kind = BY_ID[sp.kind]
    out = [f"{sp.kind}: {sp.title} (input line {sp.line})", f"  {kind.what}"]
    if sp.task:
        out.append(f"task       {sp.task}")
    if sp.acquiring:
        verb = "releasing " if sp.kind == "bad_unlock" else "acquiring "
        out.append(f"{verb} {_lock_line(sp.acquiring, spell, four)}")
    for i, ref in enumerate(sp.holding):
        out.append(f"{'holding    ' if i == 0 else '           '}{_lock_line(ref, spell, four)}")
    for d in sp.details:
        out.append(f"detail     {d}")
    if sp.chain:
        out.append("dependency chain (lockdep's order, #0 is the lock being acquired):")
        for lk in sorted(sp.chain, key=lambda lk: -lk.index):
            how = " [synchronize: lock_sync]" if lk.lock.sync else (
                f" [{_mode(lk.lock.read, False)}]" if lk.lock.read else "")
            out.append(f"  #{lk.index} {spell(lk.lock.name)}{how}  taken in {lk.where}")
            if stacks:
                out += [f"       {f}" for f in lk.stack]
    if deps:
        out.append("dependencies (held -> taken):")
        for d in deps:
            mode = f" ({_mode(d.dst_read, d.sync)})" if d.sync or d.dst_read else ""
            line = f"  {_dep_text(d, spell)}{mode}  [{d.origin}]"
            if judged:
                why = "; ".join(f"{r} (line {ln})" for r, ln in d.rules)
                line += f"  {d.verdict.upper()}" + (f": {why}" if why else "")
            out.append(line)
    if sp.scenario:
        out.append("unsafe scenario (as lockdep printed it):")
        out += [f"  {s}" for s in sp.scenario]
    if sp.problems:
        out.append("INCOMPLETE: " + "; ".join(sp.problems))
    if outcome is not None:
        out.append(f"explore: {outcome.headline}")
        if outcome.kinds:
            out.append("  lock kinds: " + ", ".join(f"{spell(n)}={k}"
                                                     for n, k in outcome.kinds.items()))
        if outcome.deadlock:
            out.append("  DEADLOCK reproduced: " + outcome.explanation.splitlines()[0])
            out += ["  " + s for s in outcome.explanation.splitlines()[1:]]
            out.append(outcome.table.rstrip())
        else:
            out.append(f"  {outcome.explanation}")
            if outcome.table:
                out.append(outcome.table.rstrip())
    return "\n".join(out)
