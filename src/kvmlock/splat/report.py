"""A kernel lockdep report as data: the locks it names, the chain it prints, its dependencies.

Lock names are kept twice: ``raw`` as lockdep printed them (``&kvm->lock/1``, ``&(kvm)->mmu_lock``,
``cpu_hotplug_lock.rw_sem``) and ``name`` as the lockdep class a locking document means
(``kvm->lock``, ``kvm->mmu_lock``, ``cpu_hotplug_lock``), so the same checker that judges the
model's graph judges the kernel's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kvmlock.spec.names import kind_of, normalise

# how lockdep prints one usage character (kernel/locking/lockdep.c, get_usage_char)
_USAGE_CHAR = {
    ".": "unused",
    "+": "irqs enabled",
    "-": "in irq",
    "?": "in irq and with irqs enabled",
}
_USAGE_SLOTS = ("hardirq", "hardirq-read", "softirq", "softirq-read", "reclaim_fs",
                "reclaim_fs-read")
#: wait types (include/linux/lockdep_types.h); 3 means "sleep" on kernels built without
#: PROVE_RAW_LOCK_NESTING, where CONFIG collapses into SPIN and SLEEP is 3
_WAIT_4 = {0: "inherit", 1: "free (RCU)", 2: "spin (raw_spinlock_t)",
           3: "config (spinlock_t, sleeps on PREEMPT_RT)", 4: "sleep (mutex, rwsem)"}
_WAIT_3 = {0: "inherit", 1: "free (RCU)", 2: "spin (spinlock_t, raw_spinlock_t)",
           3: "sleep (mutex, rwsem)"}


def decode_usage(bits: str) -> dict[str, str]:
    """``+.+.`` -> {"hardirq": "irqs enabled", "hardirq-read": "unused", ...}."""
    pairs = zip(_USAGE_SLOTS, bits, strict=False)
    return {slot: _USAGE_CHAR.get(c, f"unknown {c!r}") for slot, c in pairs}


def usage_summary(bits: str) -> str:
    """One phrase for a usage string, in lockdep's safe/unsafe words."""
    if not bits:
        return ""
    words = []
    for slot, c in zip(_USAGE_SLOTS, bits, strict=False):
        if c == "+":
            words.append(f"{slot}-unsafe")
        elif c == "-":
            words.append(f"{slot}-safe")
        elif c == "?":
            words.append(f"{slot}-safe and -unsafe")
    return ", ".join(words) or "not used in or with interrupts"


def decode_wait(wait: str, four_levels: bool) -> str:
    """``3:3`` -> "inner config (...), outer config (...)" on the report's own scale."""
    if not wait:
        return ""
    table = _WAIT_4 if four_levels else _WAIT_3
    inner, outer = (int(x) for x in wait.split(":"))
    i, o = table.get(inner, str(inner)), table.get(outer, str(outer))
    return f"inner {i}" if inner == outer else f"inner {i}, outer {o}"


def lock_class(raw: str) -> str:
    """The class a document means by a lockdep lock name (instance and subclass marks dropped)."""
    n = raw.strip()
    n = re.sub(r"(?:#\d+|/\d+)+$", "", n)
    m = re.fullmatch(r"&\(&?(.+)\)->(?:rlock|raw_lock|rw_sem|wait_lock|lock)", n)
    if m:
        n = m.group(1)
    n = re.sub(r"\((&?\w+)\)", r"\1", n).lstrip("&")
    n = re.sub(r"\.(?:rw_sem|rss|rw)$", "", n)
    if n in ("cpu_hotplug.lock", "cpu_hotplug.dep_map"):  # before 4.13 the class had this name
        n = "cpu_hotplug_lock"
    return normalise(n)


@dataclass
class LockRef:
    """One lock as the report prints it: ``(&kvm->lock){+.+.}-{3:3}, at: f+0x1/0x2``."""

    raw: str
    usage: str = ""
    wait: str = ""
    at: str = ""
    read: int = 0  # 0 exclusive, 1 shared, 2 recursive shared (SRCU, rwlock_t readers)
    sync: bool = False  # taken by a synchronize (lock_sync): a write that holds nothing

    @property
    def name(self) -> str:
        return lock_class(self.raw)


@dataclass
class Link:
    """``-> #N (lock)``: where lockdep first saw ``lock`` taken with the previous one held."""

    index: int
    lock: LockRef
    stack: list[str] = field(default_factory=list)
    where: str = ""


@dataclass
class Dependency:
    """``src`` was held when ``dst`` was taken; ``origin`` is "#N" for a chain link, or "new"."""

    src: str
    dst: str
    src_read: int
    dst_read: int
    origin: str
    where: str = ""
    sync: bool = False
    verdict: str = ""  # "violated" | "conforms" | "undocumented" (with a document)
    rules: list[tuple[str, int]] = field(default_factory=list)  # (rule, line) behind it


@dataclass
class Splat:
    """One report found in a log."""

    kind: str
    title: str
    line: int  # where its headline is in the input (1-based)
    task: str = ""
    acquiring: LockRef | None = None
    held: LockRef | None = None  # "but task is already holding lock"
    held_list: list[LockRef] = field(default_factory=list)  # "N locks held by"
    chain: list[Link] = field(default_factory=list)
    scenario: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    extra: list[tuple[LockRef, LockRef]] = field(default_factory=list)  # printed "A -> B"
    problems: list[str] = field(default_factory=list)  # what could not be read
    inversion: str = ""  # irq inversion: "took" (A took B) or "taken" (B took A)

    @property
    def holding(self) -> list[LockRef]:
        """Every lock the task held: the held-lock list, else the one the headline names."""
        out: list[LockRef] = []
        for ref in self.held_list or ([self.held] if self.held else []):
            if ref.name not in [r.name for r in out]:
                out.append(ref)
        if self.held and self.held.name not in [r.name for r in out]:
            out.append(self.held)
        return out

    @property
    def four_level_waits(self) -> bool:
        refs = [self.acquiring, self.held, *self.held_list, *(lk.lock for lk in self.chain)]
        return any(r and r.wait and "4" in r.wait for r in refs)

    def dependencies(self) -> list[Dependency]:
        """The lock-order facts the report states: each chain link, then the new dependency."""
        deps: list[Dependency] = []
        links = sorted(self.chain, key=lambda lk: lk.index)
        if links and self.acquiring is not None:
            refs = {lk.index: lk.lock for lk in links}
            if 0 not in refs:
                refs[0] = self.acquiring
            for lk in links:
                if lk.index == 0:
                    continue
                prev = refs.get(lk.index - 1)
                if prev is None:
                    continue
                deps.append(Dependency(prev.name, lk.lock.name, _holder_read(prev),
                                       lk.lock.read, f"#{lk.index}", lk.where, lk.lock.sync))
            top = refs[max(refs)]
            held = self.held or top
            deps.append(Dependency(held.name, self.acquiring.name, _holder_read(held),
                                   self.acquiring.read, "new", self.acquiring.at,
                                   self.acquiring.sync))
        elif self.kind in ("circular", "recursive", "irq_safe_unsafe") and not self.extra \
                and self.acquiring is not None and self.held is not None:
            # a report without its chain or its printed pair (cut short, or quoted in a commit
            # message) still names its new dependency: held -> acquiring
            deps.append(Dependency(self.held.name, self.acquiring.name, _holder_read(self.held),
                                   self.acquiring.read, "new", self.acquiring.at))
        for a, b in self.extra:
            deps.append(Dependency(a.name, b.name, _holder_read(a), b.read, "new", b.at))
        return deps


def _holder_read(ref: LockRef) -> int:
    """How a lock is held while the next is taken: an SRCU is only ever held as a reader."""
    if kind_of(ref.name) == "srcu":
        return 2
    return ref.read


def to_json_lock(ref: LockRef, spell: Any, four: bool) -> dict[str, Any]:
    return {
        "name": spell(ref.name),
        "class": ref.name,
        "lockdep": ref.raw,
        "usage": ref.usage,
        "usage_decoded": decode_usage(ref.usage),
        "usage_summary": usage_summary(ref.usage),
        "wait": ref.wait,
        "wait_decoded": decode_wait(ref.wait, four),
        "at": ref.at,
        "read": ref.read,
        "sync": ref.sync,
    }
