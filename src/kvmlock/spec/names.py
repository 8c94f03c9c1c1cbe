"""Lock names and lock types as a locking.rst-style document spells them, mapped onto the model.

The document is written for people, so one lock has several spellings across versions and even
within one version: the Reference section says ``kvm_arch::tsc_write_lock`` where a rule would say
``kvm->arch.tsc_write_lock``, ``cpus_read_lock()`` is the function that takes the CPU-hotplug
lock, and "MMU notifiers" is the notifier section the model marks with a pseudo-lock. Rules can
only be checked against lockdep's graph once every spelling names one lockdep class, so this
module owns that mapping (the alias table) and nothing else.

Alias table (document spelling -> lockdep class), after the generic rewrites listed in
:func:`normalise`:

=====================================================  ==========================================
``cpus_read_lock()``, ``cpus_write_lock()``             ``cpu_hotplug_lock``
``kvm->arch.mmu_lock``                                  ``kvm->mmu_lock``
``kvm_arch::X`` / ``kvm->arch.X``                       ``kvm->arch.X``
``kvm::X``                                              ``kvm->X``
``kvm_vcpu::X``, ``kvm_vcpu->X``                        ``vcpu->X``
``MMU notifiers``, ``invalidate_range_start()``         ``mmu_notifier_invalidate_range_start``
``blocked_vcpu_on_cpu_lock`` (older name)               ``wakeup_vcpus_on_cpu_lock``
=====================================================  ==========================================
"""

from __future__ import annotations

import re

#: Kinds that take part in lock order only through the document's explicit rules; they are never
#: "leaves" and an edge into them does not break a leaf.
SPECIAL_KINDS = ("srcu", "pseudo", "rcu")

#: The MMU notifier's section is a pseudo-lock of the model's, never a Reference entry.
_PSEUDO_CLASSES = {"mmu_notifier_invalidate_range_start": "pseudo"}
_known: dict[str, str] | None = None
_loading = False


def known_classes() -> dict[str, str]:
    """The lockdep classes the KVM model uses, with their kinds, read from the Reference of the
    model's own locking document: a document without a Reference entry for one of them still
    gets the right kind (needed to tell an SRCU from a lock)."""
    global _known, _loading
    if _known is None:
        if _loading:  # reading the model's document itself: its own Reference decides
            return _PSEUDO_CLASSES
        _loading = True
        try:
            from kvmlock.spec.design import model_spec

            ref = model_spec().reference
            _known = {e.name: e.kinds[0] for e in ref if len(e.kinds) == 1} | _PSEUDO_CLASSES
        finally:
            _loading = False
    return _known


ALIASES: dict[str, str] = {
    "cpus_read_lock": "cpu_hotplug_lock",
    "cpus_write_lock": "cpu_hotplug_lock",
    "cpu_hotplug_lock": "cpu_hotplug_lock",
    "kvm->arch.mmu_lock": "kvm->mmu_lock",
    "mmu notifiers": "mmu_notifier_invalidate_range_start",
    "mmu notifier": "mmu_notifier_invalidate_range_start",
    "the mmu notifier": "mmu_notifier_invalidate_range_start",
    "the mmu notifiers": "mmu_notifier_invalidate_range_start",
    "mmu notifier callbacks": "mmu_notifier_invalidate_range_start",
    "invalidate_range_start": "mmu_notifier_invalidate_range_start",
    "blocked_vcpu_on_cpu_lock": "wakeup_vcpus_on_cpu_lock",
}

_PREFIX_REWRITES = (
    (re.compile(r"^kvm_arch::"), "kvm->arch."),
    (re.compile(r"^kvm_vcpu::"), "vcpu->"),
    (re.compile(r"^kvm_vcpu->"), "vcpu->"),
    (re.compile(r"^kvm::"), "kvm->"),
)

#: One lock name as it may be written in a rule sentence (a C-ish access path, optionally a call).
NAME_RE = r"&?[A-Za-z_]\w*(?:(?:->|\.|::)\w+)*(?:\(\))?"
_NAME_FULL = re.compile(rf"^{NAME_RE}$")


def normalise(name: str) -> str:
    """The lockdep class a document spelling refers to.

    Generic rewrites first (backticks, ``&``, a trailing ``()``, the ``struct::field`` forms),
    then the alias table; a name that is not in the table is returned in its rewritten form, so
    a document can name locks the model does not have (they are then reported as such).
    """
    n = " ".join(name.replace("`", "").split()).strip()
    if n.startswith("&"):
        n = n[1:]
    if n.endswith("()"):
        n = n[:-2]
    for pat, repl in _PREFIX_REWRITES:
        n = pat.sub(repl, n)
    return ALIASES.get(n.lower() if " " in n else n, n)


#: what makes an identifier a lock rather than an English word: a struct member, a call, an
#: underscore ("kvm_lock"); "must" in "must be acquired before kvm->lock" is not a lock
_LOCK_SHAPE = re.compile(r"->|\.|::|\(\)|_")


def looks_like_name(text: str) -> bool:
    """Whether ``text`` can be a lock name (so a rule regex did not capture half a sentence)."""
    t = " ".join(text.replace("`", "").split())
    if t.lower() in ALIASES:
        return True
    return bool(_NAME_FULL.match(t)) and bool(_LOCK_SHAPE.search(t))


# --------------------------------------------------------------------------- types

#: Reference ``:Type:`` spellings -> lockdep kind.
TYPE_KINDS: dict[str, str] = {
    "mutex": "mutex",
    "struct mutex": "mutex",
    "spinlock_t": "spinlock",
    "spinlock": "spinlock",
    "raw_spinlock_t": "raw_spinlock",
    "raw spinlock": "raw_spinlock",
    "raw_spinlock": "raw_spinlock",
    "rwlock_t": "rwlock",
    "rwlock": "rwlock",
    "srcu": "srcu",
    "srcu lock": "srcu",
    "srcu_struct": "srcu",
    "struct srcu_struct": "srcu",
    "rw_semaphore": "rwsem",
    "struct rw_semaphore": "rwsem",
    "percpu_rw_semaphore": "percpu_rwsem",
    "struct percpu_rw_semaphore": "percpu_rwsem",
}

#: lockdep kind -> the C type the Reference section would name (used by ``spec render``).
KIND_TYPES: dict[str, str] = {
    "mutex": "mutex",
    "spinlock": "spinlock_t",
    "raw_spinlock": "raw_spinlock_t",
    "rwlock": "rwlock_t",
    "srcu": "srcu_struct",
    "rwsem": "rw_semaphore",
    "percpu_rwsem": "percpu_rw_semaphore",
}


def parse_type(text: str) -> tuple[str, ...] | None:
    """The lockdep kinds a ``:Type:`` value allows, or ``None`` if a part is not a known type.

    ``spinlock_t or rwlock_t`` allows either (the document's way of saying "depends on the
    architecture").
    """
    parts = re.split(r"\s*(?:,|\bor\b|/)\s*", " ".join(text.split()).strip().rstrip("."))
    kinds: list[str] = []
    for p in parts:
        if not p:
            continue
        k = TYPE_KINDS.get(p.lower())
        if k is None:
            return None
        if k not in kinds:
            kinds.append(k)
    return tuple(kinds) or None


def kind_of(name: str, declared: dict[str, tuple[str, ...]] | None = None) -> str | None:
    """A lock's kind: from the document's own Reference if declared, else the model's table."""
    if declared and name in declared and len(declared[name]) == 1:
        return declared[name][0]
    known = known_classes()
    if name in known:
        return known[name]
    if re.search(r"(?:->|\.|::)srcu$", name):  # a struct's srcu field, not synchronize_srcu
        return "srcu"
    return None


def strip_subclass(cls: str) -> str:
    """lockdep names subclass N of class C ``C/N``; the document is about C."""
    base, sep, tail = cls.rpartition("/")
    return base if sep and tail.isdigit() else cls
