"""The Reference's ``:Protects:`` fields, checked against the protected data a run used.

A Protects item names data ("vm_list", "kvm->memslots", "kvm->buses updates"); the run knows
the data it declared protected -- guarded fields and RCU pointers -- under their own names
(``Machine.vm_list``, ``kvm->memslots``). An item is matched to a datum when the datum's last
name component appears among the item's words (plurals folded, ``a::{b,c}`` expanded), and
judged by what the datum's declaration checked:

* a guarded field guarded by the entry's lock, or an RCU pointer whose read side is the entry's
  lock: *held* when every access had the protection, *violated* (with the access sites) when
  lockdep reported one that did not;
* an RCU pointer whose read side is another lock, when the item speaks of updates (the entry
  is its update side, "slots_lock protects kvm->buses updates"): *held* when the entry's lock
  was held at every publication, *violated* with the sites of the publications made without it.

Whatever is left is *not exercised*, and says why: nothing in the run is named by the item,
or what is named is protected by another lock in the run, or it was never published.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from kvmlock.spec.model import RefEntry

HELD, VIOLATED, NOT_EXERCISED = "held", "violated", "not exercised"


@dataclass
class ProtectsResult:
    """One Protects item of one Reference entry, judged against the run."""

    entry: RefEntry
    item: str
    status: str
    data: list[str] = field(default_factory=list)  # the run's data the item was matched to
    detail: str = ""
    where: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.entry.name} protects {self.item}"


_BRACES = re.compile(r"([\w>:.-]*?)\{([^}]*)\}")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fold(word: str) -> str:
    w = word.lower()
    return w[:-1] if len(w) > 3 and w.endswith("s") else w


# Both are asked again for the same few strings by every check of a run's graph (a scenario
# checks it once per execution): remembered, they cost a dict look-up.
@functools.lru_cache(maxsize=4096)
def words(item: str) -> frozenset[str]:
    """The item's words, folded; ``kvm_arch::{a,b}`` counts as ``a`` and ``b``."""
    text = _BRACES.sub(lambda m: " ".join(m.group(2).split(",")), item)
    return frozenset(_fold(w) for w in _WORD.findall(text))


@functools.lru_cache(maxsize=4096)
def short(name: str) -> str:
    """A datum's own name: ``Machine.vm_list`` -> ``vm_list``, ``kvm->buses`` -> ``buse``."""
    return _fold(re.split(r"->|::|\.", name)[-1])


def check_protects(reference: list[RefEntry], protected: list[Any] | None,
                   reasons: dict[tuple[str, str], str] | None = None,
                   ) -> list[ProtectsResult]:
    """Judge every Protects item of ``reference`` against the run's ``protected`` data.

    ``reasons`` maps ``(lock, item)`` to why the program does not declare that item as data
    (the KVM model states its own); an item left *not exercised* says that reason instead of
    the one the matching found.
    """
    out = []
    for entry in reference:
        for item in entry.protects:
            r = _judge(entry, item, protected)
            why = (reasons or {}).get((entry.name, item))
            if why and r.status == NOT_EXERCISED:
                r.detail = why
            out.append(r)
    return out


def _judge(entry: RefEntry, item: str, protected: list[Any] | None) -> ProtectsResult:
    if protected is None:
        return ProtectsResult(entry, item, NOT_EXERCISED,
                              detail="the graph carries no protected-data records")
    ws = words(item)
    named = [p for p in protected if short(p.name) in ws]
    if not named:
        return ProtectsResult(entry, item, NOT_EXERCISED,
                              detail="no guarded field or RCU pointer of the run is named here")
    held: list[str] = []
    bad: list[tuple[str, list[str], str]] = []
    idle: list[str] = []
    for p in named:
        if p.lock == entry.name:  # the datum's own declared protection
            if p.violations:
                how = "read outside the read side" if p.kind == "rcu" else \
                    "accessed without the lock"
                bad.append((p.name, list(p.violations), how))
            elif p.kind == "rcu":
                held.append(f"every read of {p.name} was inside the read side or on the "
                            f"update side")
            else:
                held.append(f"every access of {p.name} held it")
        elif p.kind == "rcu" and not p.lock and "update" not in ws:
            idle.append(f"{p.name} was published in the run but never read inside a read side")
        elif p.kind == "rcu" and "update" not in ws:
            idle.append(f"{p.name} is read under {p.lock}; the item does not speak of its "
                        f"updates")
        elif p.kind == "rcu":  # the entry is the pointer's update side
            if not p.updates:
                idle.append(f"{p.name} was never published")
                continue
            missing = [w for h, w in p.updates if entry.name not in h]
            if missing:
                bad.append((p.name, missing, f"published without {entry.name}"))
            else:
                held.append(f"every publication of {p.name} held it")
        else:
            idle.append(f"the run guards {p.name} with {p.lock}")
    names = [p.name for p in named]
    if bad:
        where = [w for _n, ws_, _h in bad for w in ws_]
        detail = "; ".join(f"{n} {h}" for n, _w, h in bad)
        return ProtectsResult(entry, item, VIOLATED, names, detail, where)
    if held:
        return ProtectsResult(entry, item, HELD, names, "; ".join(held))
    return ProtectsResult(entry, item, NOT_EXERCISED, names, "; ".join(idle))
