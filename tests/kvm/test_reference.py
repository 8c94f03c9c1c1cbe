"""The lock reference cannot drift from the model: every lock built is declared, kind-exact."""

import pytest

from kvmlock import sync
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.reference import KIND_OF_TYPE, LOCKS, LockDecl, by_name

LOCK_TYPES = (sync.Mutex, sync.SpinLock, sync.RawSpinLock, sync.RWLock, sync.RWSemaphore,
              sync.SRCU)


def built_locks() -> dict[str, str]:
    """Every lock object the model builds: Machine, its per-CPU state, a VM and its vCPUs."""
    m = Machine(2, usage_lock=True)
    vm = m.create_vm(nr_vcpus=2)
    objs = [*vars(m).values(), *(v for pc in m.cpus for v in vars(pc).values()),
            *vars(vm).values(), *(v for vc in vm.vcpus for v in vars(vc).values())]
    return {o.name: o.KIND for o in objs if isinstance(o, LOCK_TYPES)}


def test_every_lock_the_model_builds_is_declared_with_its_kind():
    built = built_locks()
    assert len(built) >= 17, built
    for name, kind in built.items():
        decl = by_name(name)
        assert decl.kind == kind, f"{name}: declared {decl.type} ({decl.kind}), built {kind}"


def test_every_declared_lock_exists_in_the_model():
    built = built_locks()
    missing = [d.name for d in LOCKS if d.name not in built]
    assert missing == [], missing


def test_declarations_are_complete_and_unique():
    names = [d.name for d in LOCKS]
    assert len(names) == len(set(names))
    for d in LOCKS:
        assert d.protects and all(isinstance(p, str) and p for p in d.protects), d.name
        assert d.comment, f"{d.name}: say why it is this kind of lock"
        assert d.arch in ("any", "x86") or d.arch.startswith("any ("), d.arch


def test_detector_catches_a_wrong_kind_and_passes_the_right_one():
    right = LockDecl("kvm->lock", "mutex", "any", ("x",), "y")
    wrong = LockDecl("kvm->lock", "spinlock_t", "any", ("x",), "y")
    assert right.kind == built_locks()["kvm->lock"]
    assert wrong.kind != built_locks()["kvm->lock"]


def test_bad_declarations_and_lookups_are_named():
    with pytest.raises(ValueError, match="type 'semaphore' is not one of"):
        LockDecl("x", "semaphore", "any", ("y",))
    with pytest.raises(TypeError, match="protects must be a tuple"):
        LockDecl("x", "mutex", "any", ["y"])  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no lock named 'kvm->big_lock'.*kvm_lock"):
        by_name("kvm->big_lock")
    assert set(KIND_OF_TYPE.values()) >= {"mutex", "spinlock", "raw_spinlock", "rwlock", "srcu"}
