"""A kernel "suspicious RCU usage" report, judged against the document's Protects fields.

The kernel prints where the check failed (``kvm_host.h:1084``) and what the task held, but not
which pointer it was reading; the functions around the report do say it (a bot names the
function in its subject, the stack backtrace lists the callers). KVM reads each of its
RCU-protected pointers through a handful of accessors, so the first accessor found names the
data. The document's Reference says which locks protect that data; if the task held one of them
the document allows the access (the check's condition is narrower than the document), if it held
none the access breaks the document. A lock protects the pointer when its entry names the data
and it is the read side (an SRCU), or its item speaks of the data's updates (the update side).

This is the kernel's half of what ``kvmlock.sync.RcuPointer`` reports in a Python run, and it
has the same kind: ``suspicious_rcu``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kvmlock.spec.model import Spec
from kvmlock.spec.protects import short, words
from kvmlock.splat.kinds import report_starts
from kvmlock.splat.report import Splat
from kvmlock.splat.text import kernel_lines

#: KVM's accessors of its RCU-protected pointers, by the data they read (kvm_host.h, kvm_main.c)
ACCESSORS: dict[str, tuple[str, ...]] = {
    "kvm->memslots": (
        "__kvm_memslots", "kvm_memslots", "kvm_vcpu_memslots", "__gfn_to_memslot",
        "gfn_to_memslot", "kvm_vcpu_gfn_to_memslot", "id_to_memslot", "search_memslots",
        "kvm_for_each_memslot", "__kvm_set_memory_region", "kvm_get_dirty_log",
    ),
    "kvm->buses": (
        "kvm_get_bus", "kvm_io_bus_write", "kvm_io_bus_write_cookie", "kvm_io_bus_read",
        "kvm_io_bus_register_dev", "kvm_io_bus_unregister_dev", "kvm_io_bus_get_dev",
    ),
}
_CALL = re.compile(r"\b(" + "|".join(sorted({f for fs in ACCESSORS.values() for f in fs},
                                              key=len, reverse=True)) + r")\b")
_DATA_OF = {f: data for data, fs in ACCESSORS.items() for f in fs}

VIOLATED, CONFORMS, UNJUDGED = "violated", "conforms", "unjudged"


@dataclass
class RcuVerdict:
    """What the report read, what protects it by the document, and whether the task held it."""

    data: str | None
    accessor: str = ""
    protected_by: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    verdict: str = UNJUDGED
    detail: str = ""

    def render(self, spell: Any = str) -> str:
        """Two lines for the text output: the data read, and the verdict with its reason."""
        what = f"{self.data} (read by {self.accessor})" if self.data else "unknown"
        return (f"protected data  {what}\n"
                f"  {self.verdict.upper()}: {self.detail}")

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "accessor": self.accessor, "protected_by": self.protected_by,
                "held": self.held, "verdict": self.verdict, "detail": self.detail}


def surroundings(text: str) -> list[list[str]]:
    """For each report of ``text`` (as :func:`~kvmlock.splat.read_log` finds them), the lines
    that may name what it read: its own lines first, then those before it, nearest first."""
    lines = kernel_lines(text)
    starts = [i for i, _ in report_starts(lines)]
    out = []
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        before = lines[starts[n - 1] + 1 if n else 0:i]
        out.append(lines[i:end] + before[::-1])
    return out


def accessed(lines: list[str]) -> tuple[str | None, str]:
    """(data, accessor) named by the first accessor call in ``lines``; (None, "") if none."""
    for line in lines:
        m = _CALL.search(line)
        if m:
            return _DATA_OF[m.group(1)], m.group(1)
    return None, ""


def judge_rcu(sp: Splat, around: list[str], spec: Spec | None) -> RcuVerdict:
    """Judge one ``suspicious_rcu`` report; ``around`` are the log lines that belong to it."""
    data, accessor = accessed(around)
    held = [r.name for r in sp.holding]
    v = RcuVerdict(data, accessor, held=held)
    if data is None:
        v.detail = ("the report names no accessor of a protected pointer "
                    f"({', '.join(ACCESSORS)}): which data it read is unknown")
        return v
    if spec is None:
        v.detail = "no document to judge it against"
        return v
    key = short(data)
    v.protected_by = [e.name for e in spec.reference if any(
        key in (ws := words(item)) and ("srcu" in e.kinds or "update" in ws)
        for item in e.protects)]
    if not v.protected_by:
        v.detail = f"the document's Reference names no lock that protects {data}"
        return v
    by = " or ".join(v.protected_by)
    ok = [h for h in held if h in v.protected_by]
    if ok:
        v.verdict = CONFORMS
        v.detail = (f"{data} was read holding {', '.join(ok)}, which the document says protects "
                    f"it: the kernel's check condition is narrower than the document")
    else:
        v.verdict = VIOLATED
        v.detail = (f"{data} was read holding {', '.join(held) or 'nothing'}; the document "
                    f"protects it with {by}")
    return v
