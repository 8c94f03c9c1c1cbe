"""Every lock the model builds, as lockdep sees it: the facts ``kvmlock spec render`` writes.

The model's locking document (``locking.rst`` beside this module) says what each lock is; this
module asks the model itself, by building one machine with a VM and reading the lock objects it
made. The two are compared by a test and rendered by ``kvmlock spec render``, so the document
cannot name a lock the model lacks, miss one it builds, or give one the wrong kind.
"""

from __future__ import annotations

from importlib import resources

from kvmlock import sync

__all__ = ["MODEL_DOC", "model_doc_text", "model_locks"]

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
    from kvmlock.kvm.machine import Machine
    from kvmlock.kvm.vm import VM

    m = Machine(2, usage_lock=True)
    vm = VM(m, nr_vcpus=1)
    objs = [*vars(m).values(), *(v for pc in m.cpus for v in vars(pc).values()),
            *vars(vm).values(), *(v for vc in vm.vcpus for v in vars(vc).values())]
    out: dict[str, str] = {}
    for o in objs:
        if isinstance(o, _LOCK_TYPES):
            out.setdefault(o.name, o.KIND)
    return out
