"""The kinds of report lockdep (and its RCU and might_sleep cousins) prints, by their titles.

One table, so a new kind is one row: ``id`` is what ``--json`` calls it, ``title`` the kernel's
headline (any of its spellings across releases), ``order`` whether the report is about the order
of two or more locks (only those can be judged against a document's rules and explored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    id: str
    title: re.Pattern[str]
    what: str
    order: bool = False


KINDS: tuple[Kind, ...] = (
    Kind("circular", re.compile(r"possible circular locking dependency detected", re.I),
         "a cycle in the lock order: two tasks can each hold what the other waits for", True),
    Kind("recursive", re.compile(r"possible recursive locking detected", re.I),
         "a lock class taken while a lock of the same class is held", True),
    Kind("inconsistent", re.compile(r"inconsistent lock state", re.I),
         "a lock used both in an interrupt and with that interrupt enabled"),
    Kind("irq_inversion", re.compile(r"possible irq lock inversion dependency detected", re.I),
         "an irq-safe lock ordered against an irq-unsafe one", True),
    Kind("irq_safe_unsafe", re.compile(
        r"(?:HARDIRQ|SOFTIRQ)-(?:irq-)?safe -> (?:HARDIRQ|SOFTIRQ)-(?:irq-)?unsafe lock order"
        r"(?: detected)?",
        re.I), "an irq-unsafe lock taken inside an irq-safe one", True),
    Kind("bad_unlock", re.compile(r"bad unlock balance detected", re.I),
         "a lock released that the task does not hold"),
    Kind("held_at_exit", re.compile(
        r"lock held when returning to user space|still has locks held|held lock freed"
        r"|lock held at task exit|is leaving the kernel with locks still held", re.I),
         "a lock still held when the task left the kernel, exited or freed it"),
    Kind("suspicious_rcu", re.compile(r"suspicious RCU usage", re.I),
         "an RCU-protected pointer read without the protection its check names"),
    Kind("sleeping", re.compile(r"sleeping function called from invalid context", re.I),
         "a function that may sleep called where sleeping is not allowed"),
    Kind("invalid_wait", re.compile(r"Invalid wait context", re.I),
         "a lock that may sleep (or spin on PREEMPT_RT) taken inside one that may not"),
)

BY_ID = {k.id: k for k in KINDS}


_HEAD = re.compile(r"^[\s\[]*(?:WARNING|BUG|INFO): ")


_TAINT = re.compile(r"\s#\d+\s+(?:Not tainted|Tainted:)|^\s*(?:Not tainted|Tainted:)")


def kind_of_title(line: str, after: list[str] | tuple[str, ...] = ()) -> Kind | None:
    """The kind a report's headline names, or None for any other line.

    The kernel's headline is the whole line: "WARNING: suspicious RCU usage in f" alone is a
    bot's subject naming a report, not the report (only might_sleep adds "at FILE:LINE"). A
    bot's title does head the kernel's report when a commit quotes the bot, so it counts when
    the kernel's next line, its version and taint, follows (``after``: the lines after it).
    """
    if not _HEAD.match(line):
        return None
    for k in KINDS:
        m = k.title.search(line)
        if m is None:
            continue
        rest = line[m.end():].strip(" !]")
        if not rest or (k.id == "sleeping" and rest.startswith("at ")):
            return k
        if rest.startswith("in ") and any(_TAINT.search(a) for a in after[:2]):
            return k
    return None


def report_starts(lines: list[str]) -> list[tuple[int, Kind]]:
    """Where each report of a log (its kernel lines) starts, and its kind."""
    out = []
    for i, line in enumerate(lines):
        if _HEAD.match(line):
            after = [a for a in lines[i + 1:i + 4] if a.strip()]
            if k := kind_of_title(line, after):
                out.append((i, k))
    return out
