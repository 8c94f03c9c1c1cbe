"""Every lock the model builds and the data each one protects: what ``kvmlock spec render`` writes.

The model's locking document (``locking.rst`` beside this module) says what each lock is and
what it protects; this module asks the model itself, by building one machine with a VM and
reading the lock objects it made and the protected-data declarations (``guarded_by`` fields,
``Guarded`` cells, ``RcuPointer`` read and update sides) of every object reachable from them.
The two are compared by a test and rendered by ``kvmlock spec render``, so the document cannot
name a lock the model lacks, miss one it builds, give one the wrong kind, or say a lock
protects data the model guards with another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kvmlock import sync
from kvmlock.lockdep.protect import lock_name

__all__ = ["MODEL_DOC", "UNDECLARED", "Protection", "model_doc_text", "model_locks",
           "model_protects"]

#: The model's locking design, shipped as package data beside this module.
MODEL_DOC = "locking.rst"

_LOCK_TYPES = (sync.Mutex, sync.SpinLock, sync.RawSpinLock, sync.RWLock, sync.RWSemaphore,
               sync.SRCU, sync.CpuHotplugLock)


def model_doc_text() -> str:
    """The text of the model's locking document."""
    return resources.files("kvmlock.kvm").joinpath(MODEL_DOC).read_text(encoding="utf-8")


def model_locks() -> dict[str, str]:
    """``{lock class: lockdep kind}`` for every lock a machine, its CPUs, a VM and its vCPUs
    build, in construction order (the newer ``kvm_usage_lock`` design, so that lock exists)."""
    out: dict[str, str] = {}
    for o in _model_objects():
        if isinstance(o, _LOCK_TYPES):
            out.setdefault(o.name, o.KIND)
    return out


@dataclass(frozen=True)
class Protection:
    """One Protects item the model declares: ``lock`` (a lock class) protects ``item``.

    ``item`` is the datum's name as the document writes it (a field's own name, a cell's or
    an RCU pointer's name; ``"<pointer> updates"`` for an RCU pointer's update side), ``data``
    the name its reports use (``Machine.vm_list``) and ``declared`` how: ``guarded_by``,
    ``Guarded``, ``read side`` or ``update side``.
    """

    lock: str
    item: str
    data: str
    declared: str


#: The Protects items of the model's document that name no datum the model declares, each with
#: why it is not checked as data and what checks it instead. ``kvmlock spec check`` on the
#: model's run gives these reasons for the items it cannot find data for; a test keeps the
#: keys equal to the document's undeclared items, so none is "not exercised" without one.
UNDECLARED: dict[tuple[str, str], str] = {
    ("cpu_hotplug_lock", "the set of online CPUs"):
        "a code path, not declared data: cpu_up/cpu_down change a CPU's online flag with the "
        "lock held for write; the hardware.* scenarios check what it protects (virtualization "
        "on exactly on the online CPUs while VMs exist)",
    ("tk_core.lock", "the timekeeper"):
        "not KVM's data: the model keeps no timekeeper, only the lock the timer tick holds "
        "around KVM's notifier (its order and context are checked)",
    ("kvm_usage_lock", "turning hardware virtualization on and off"):
        "a code path, not declared data: per-CPU enabling runs under this lock or from the "
        "hotplug callbacks; Machine.check_hardware and the hardware.* scenarios check it",
    ("vendor_module_lock", "loading a vendor module (kvm_intel or kvm_amd)"):
        "a code path: it serialises vendor module set-up, which keeps no shared data in the "
        "model; its order against cpus_read_lock is checked",
    ("kvm->lock", "other VM-wide configuration changed by VM ioctls (vCPU creation, irqchip, "
                  "...)"):
        "not one datum: vCPU creation and the irqchip's mode are published to lockless "
        "readers (vcpus list, Atomic64 irqchip_mode); the order.* and srcu.* scenarios check "
        "the ioctls that take it",
    ("kvm->slots_arch_lock", "arch-specific memslot fields changed inside a kvm->srcu read side "
                             "(the reverse maps the first shadow root allocates)"):
        "the model allocates no per-slot reverse maps: the first shadow root's allocation is "
        "an Atomic64 flag set under this lock, checked by the srcu.* scenarios and the "
        "root_alloc_without_slots_arch_lock mutant",
    ("kvm->mmu_lock", "shadow pages"):
        "not declared data: shadow pages are also read locklessly (the fast page fault's "
        "walk, a read side of its own); the mmu.* and fast_pf.* scenarios check the MMU's "
        "invariants (VM.check) instead",
    ("kvm->mmu_lock", "SPTEs (except fixes made by the fast page fault)"):
        "SPTEs are Atomic64 cells changed by cmpxchg, under the lock and by the lockless fast "
        "path alike; the fast_pf.* and dirty-log scenarios check each SPTE against the host "
        "and guest page tables",
    ("kvm->arch.mmu_unsync_pages_lock", "marking shadow pages unsync under a read-held "
                                        "mmu_lock"):
        "a code path: the data it changes is unsync_count, declared and checked above",
    ("kvm->mn_invalidate_lock", "the memslot updater's registration as the waiter of "
                                "mn_memslots_update_rcuwait"):
        "a code path: the updater registers (prepare, finish) with the lock held, and the "
        "waiter it records lives inside the RCUWait primitive, not in a model field; the "
        "mmu_notifier.* scenarios check that an update waits for every invalidation "
        "(mutants swap_without_waiting, swap_recheck_once)",
}


def model_protects() -> list[Protection]:
    """What every protected-data declaration of the model says its lock protects, in the order
    the model's objects are found (the machine first, then a VM and what it owns)."""
    out: list[Protection] = []
    for o in _model_objects():
        for p in _declared(o):
            if p not in out:
                out.append(p)
    return out


def _declared(o: Any) -> Iterator[Protection]:
    seen: set[str] = set()
    for klass in type(o).__mro__:
        for field, attr in vars(klass).items():
            if isinstance(attr, sync.guarded_by) and field not in seen:
                seen.add(field)
                yield Protection(lock_name(attr._lock(o)), field, attr.data, "guarded_by")
    if isinstance(o, sync.Guarded):
        yield Protection(lock_name(o.lock), o.name, o.name, "Guarded")
    elif isinstance(o, sync.RcuPointer):
        if o.read_side is not None:
            yield Protection(lock_name(o.read_side), o.name, o.name, "read side")
        if o.update_side is not None:
            yield Protection(lock_name(o.update_side), f"{o.name} updates", o.name,
                             "update side")


def _model_objects() -> list[Any]:
    """A machine, its CPUs, a VM with a vCPU, its TSC, Hyper-V and Xen state (the newer
    ``kvm_usage_lock`` design, so that lock exists), and every model object reachable from
    them, each once."""
    from kvmlock.kvm.hyperv import HyperV
    from kvmlock.kvm.machine import Machine
    from kvmlock.kvm.tsc import TscSync
    from kvmlock.kvm.vm import VM
    from kvmlock.kvm.xen import Xen

    m = Machine(2, usage_lock=True)
    vm = VM(m, nr_vcpus=1)
    out: list[Any] = []
    seen: set[int] = set()
    todo: deque[Any] = deque([m, vm, TscSync(vm), HyperV(vm), Xen(vm)])
    while todo:
        o = todo.popleft()
        if id(o) in seen:
            continue
        seen.add(id(o))
        out.append(o)
        if isinstance(o, (list, tuple, set, frozenset)):
            todo += [v for v in o if _modelled(v)]
        elif isinstance(o, dict):
            todo += [v for v in o.values() if _modelled(v)]
        elif not isinstance(o, _LOCK_TYPES + (sync.RcuPointer, sync.Guarded)):
            todo += [v for v in _fields(o) if _modelled(v)]
    return out


def _modelled(v: Any) -> bool:
    """Worth looking inside: a model object, a lock, protected data, or a container of them."""
    if isinstance(v, (list, tuple, set, frozenset, dict, sync.RcuPointer, sync.Guarded)):
        return True
    mod = type(v).__module__
    return mod.startswith("kvmlock.kvm") or mod.startswith("kvmlock.sync")


def _fields(o: Any) -> list[Any]:
    vals = list(getattr(o, "__dict__", {}).values())
    for klass in type(o).__mro__:
        for name in getattr(klass, "__slots__", ()):
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                vals.append(getattr(o, name))
            except AttributeError:
                pass
    return vals
