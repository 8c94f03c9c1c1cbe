"""Known, explained violations: a CI gate that fails only on new ones.

A document and the code it describes disagree for a while sometimes, for a reason someone has
written down (the kernel nests ``mn_invalidate_lock`` inside ``slots_arch_lock`` although the
document calls every other lock a leaf). An accept file lists such violations, one a line, each
with its reason::

    # WHAT: REASON
    kvm->slots_arch_lock -> kvm->mn_invalidate_lock: the memslot swap checks for invalidations
    line 62: the leaf sentence predates vendor_module_lock
    type wakeup_vcpus_on_cpu_lock: the kernel declares it raw_spinlock_t

WHAT is a dependency ``A -> B`` (any violation whose offending path has that step), a rule's
``line N``, or ``type LOCK``. A line without a reason is an error: an accepted violation nobody
can explain is just a hidden one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kvmlock.spec.check import ACCEPTED, VIOLATED, Conformance
from kvmlock.spec.inputs import read_text
from kvmlock.spec.model import SpecError
from kvmlock.spec.names import normalise


@dataclass
class Waiver:
    what: str
    reason: str
    line: int
    used: bool = False


#: a list of known violations, one a line: a few KiB at most
MAX_BYTES = 4 * 1024 * 1024
_LINE = re.compile(r"^(?P<what>.+?)\s*:\s+(?P<why>\S.*)$")


def load_waivers(path: str | os.PathLike[str]) -> list[Waiver]:
    p = Path(path)
    text = read_text(p, "accept file", MAX_BYTES)
    out: list[Waiver] = []
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        m = _LINE.match(s)
        what = m["what"].strip() if m else ""
        if not m or not (" -> " in what or re.fullmatch(r"line \d+|type \S+", what)):
            raise SpecError("an accepted violation is 'A -> B: reason', 'line N: reason' or "
                            f"'type LOCK: reason', not {s!r}", n, str(p))
        out.append(Waiver(what, m["why"].strip(), n))
    return out


def _matches(w: Waiver, rule_line: int, path: list[tuple[str, str]]) -> bool:
    if w.what.startswith("line "):
        return int(w.what.split()[1]) == rule_line
    a, _, b = w.what.partition(" -> ")
    return (normalise(a), normalise(b)) in path


def apply(conf: Conformance, waivers: list[Waiver]) -> list[Waiver]:
    """Mark the violations the waivers name as accepted; return the waivers that named none."""
    for r in conf.results:
        if r.status != VIOLATED:
            continue
        steps = [(e.src, e.dst) for e in r.path]
        for w in waivers:
            if not w.what.startswith("type ") and _matches(w, r.rule.line, steps):
                r.status, r.accepted, w.used = ACCEPTED, w.reason, True
                break
    for t in conf.types:
        for w in waivers:
            if t.status == VIOLATED and w.what == f"type {t.entry.spelled}" or (
                    t.status == VIOLATED and w.what.startswith("type ")
                    and normalise(w.what[5:]) == t.entry.name):
                t.status, t.accepted, w.used = ACCEPTED, w.reason, True
                break
    return [w for w in waivers if not w.used]
