"""The SRCU rules of locking.rst: which locks may be taken inside a ``kvm->srcu`` read side.

``synchronize_srcu(&kvm->srcu)`` waits for every reader. It is called with ``kvm->slots_lock``
held (publishing new memslots), and may be called under ``kvm->lock`` and ``vcpu->mutex``. So a
reader that takes one of those locks can wait for a task that waits for the reader: a deadlock
lockdep sees as the cycle ``L -> kvm->srcu -> L``, with the read side a recursive read of the
SRCU class and ``synchronize`` an exclusive acquire of it.

``kvm->slots_arch_lock`` is the exception the design makes on purpose: the memslot updater drops
it before ``synchronize``, so a reader may take it (e.g. while handling a VM exit).

Older versions of the document said the opposite for ``kvm->lock``: taken *inside* the read
side, with ``call_srcu`` instead of ``synchronize`` under it. That rule contradicts the same
document's orders -- ``kvm->lock`` is outside ``kvm->slots_lock``, and the memslot update
synchronizes under ``kvm->slots_lock`` -- which closes the three-lock cycle
``kvm->srcu -> kvm->lock -> kvm->slots_lock -> kvm->srcu``. lockdep finds it from four tasks
each of which is fine on its own (``srcu.old_rule_kvm_lock_in_reader.broken``); newer versions
of the document forbid ``kvm->lock`` inside the read side, as the correct variant here does.

The correct variants also check what SRCU is for: a reader never uses a memslots array that
the updater has already freed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmlock import runtime
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import check_graph, together
from kvmlock.scenarios.registry import scenario
from kvmlock.sync import Atomic64

__all__: list[str] = []

_BOUND = {"max_runs": 500}


class _Slots:
    """A memslots array: ``freed`` once the updater reclaims it after a grace period.

    Using and freeing it are visible steps on the array, so the explorer can put a free between
    a reader's load of the pointer and its use of what it loaded.
    """

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.freed = False
        self._rt = runtime.RT

    def use(self) -> None:
        self._rt.point(self, "read memslots", False)
        assert not self.freed, f"memslots generation {self.generation} used after it was freed"

    def free(self) -> None:
        self._rt.point(self, "free memslots", True)
        self.freed = True


class _Memslots:
    """The ``kvm->memslots`` pointer: readers load it inside the read side."""

    def __init__(self) -> None:
        self.arrays = [_Slots(0)]
        self.ptr = Atomic64(0, name="kvm->memslots")

    def current(self) -> _Slots:
        return self.arrays[self.ptr.load()]

    def publish(self) -> _Slots:
        old = self.current()
        self.arrays.append(_Slots(len(self.arrays)))
        self.ptr.store(len(self.arrays) - 1)
        return old


def _reader(vm: VM, slots: _Memslots, inner: Any | None) -> None:
    """A vCPU handling an exit: memslots read inside ``kvm->srcu``, maybe with a lock inside."""
    idx = vm.srcu.read_lock()
    try:
        s = slots.current()
        if inner is not None:
            with inner:
                pass
        s.use()
    finally:
        vm.srcu.read_unlock(idx)


def _update_memslots(vm: VM, slots: _Memslots) -> None:
    """The updater's protocol: slots_lock, slots_arch_lock around the swap, drop, synchronize."""
    with vm.slots_lock:
        with vm.slots_arch_lock:
            old = slots.publish()
        vm.srcu.synchronize()
        old.free()


def _sync_update(vm: VM, slots: _Memslots, lock: Any) -> Callable[[], None]:
    """An ioctl that swaps the memslots and waits for a grace period while holding ``lock``."""

    def update() -> None:
        with lock:
            old = slots.publish()
            vm.srcu.synchronize()
            old.free()

    return update


def _update_vs_reader(inner: str) -> None:
    """The memslot updater racing a vCPU whose read side takes the VM's lock ``inner``."""
    vm = VM(None, nr_vcpus=1)
    slots = _Memslots()
    together(lambda: _update_memslots(vm, slots), lambda: _reader(vm, slots, getattr(vm, inner)),
             names=["memslot updater", "vcpu0"])


@scenario("srcu.slots_arch_lock_in_reader.correct", variant="correct", expect="pass",
          rule="kvm->slots_arch_lock may be taken inside a kvm->srcu read side",
          invariant="no reader uses freed memslots; no cycle through kvm->srcu", **_BOUND)
def slots_arch_lock_in_reader() -> None:
    _update_vs_reader("slots_arch_lock")
    check_graph()


@scenario("srcu.slots_lock_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="kvm->slots_lock taken inside a kvm->srcu read side",
          invariant="lockdep reports kvm->slots_lock -> kvm->srcu -> kvm->slots_lock", **_BOUND)
def slots_lock_in_reader() -> None:
    _update_vs_reader("slots_lock")


@scenario("srcu.kvm_lock_outside_reader.correct", variant="correct", expect="pass",
          rule="kvm->lock is taken outside the kvm->srcu read side; synchronize may run under it",
          invariant="no reader uses freed memslots; the call_srcu free runs after a grace period",
          **_BOUND)
def kvm_lock_outside_reader() -> None:
    vm = VM(None, nr_vcpus=1)
    slots = _Memslots()

    vm_ioctl_sync = _sync_update(vm, slots, vm.lock)

    def vm_ioctl_deferred() -> None:
        with vm.lock:
            old = slots.publish()
            vm.srcu.call_srcu(old.free)

    def vm_ioctl_reader() -> None:
        with vm.lock:
            _reader(vm, slots, None)

    together(vm_ioctl_sync, vm_ioctl_deferred, vm_ioctl_reader,
             names=["vm ioctl (sync)", "vm ioctl (call_srcu)", "vm ioctl (reader)"])
    vm.srcu.barrier()
    assert all(a.freed for a in slots.arrays[:-1]), "a deferred free never ran after srcu_barrier"
    check_graph()


@scenario("srcu.old_rule_kvm_lock_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="older rule: kvm->lock inside kvm->srcu, with call_srcu (not synchronize) under "
               "kvm->lock -- but kvm->lock is outside slots_lock, which synchronizes",
          invariant="lockdep reports kvm->srcu -> kvm->lock -> kvm->slots_lock -> kvm->srcu",
          **_BOUND)
def old_rule_kvm_lock_in_reader() -> None:
    vm = VM(None, nr_vcpus=1)
    slots = _Memslots()

    def vm_ioctl() -> None:
        with vm.lock, vm.slots_lock:
            pass

    def deferred_under_kvm_lock() -> None:
        with vm.lock:
            vm.srcu.call_srcu(slots.publish().free)

    together(lambda: _update_memslots(vm, slots), vm_ioctl, deferred_under_kvm_lock,
             lambda: _reader(vm, slots, vm.lock),
             names=["memslot updater", "vm ioctl", "vm ioctl (call_srcu)", "vcpu0"])


@scenario("srcu.kvm_lock_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="synchronize_srcu under kvm->lock while a reader takes kvm->lock",
          invariant="lockdep reports kvm->lock -> kvm->srcu -> kvm->lock", **_BOUND)
def kvm_lock_in_reader() -> None:
    vm = VM(None, nr_vcpus=1)
    slots = _Memslots()

    vm_ioctl = _sync_update(vm, slots, vm.lock)

    together(vm_ioctl, lambda: _reader(vm, slots, vm.lock), names=["vm ioctl", "vcpu0"])


@scenario("srcu.vcpu_mutex_outside_reader.correct", variant="correct", expect="pass",
          rule="vcpu->mutex is taken outside the kvm->srcu read side (KVM_RUN)",
          invariant="no reader uses freed memslots; no cycle through kvm->srcu", **_BOUND)
def vcpu_mutex_outside_reader() -> None:
    vm = VM(None, nr_vcpus=1)
    vcpu = vm.vcpus[0]
    slots = _Memslots()

    vcpu_ioctl_sync = _sync_update(vm, slots, vcpu.mutex)

    def kvm_run() -> None:
        with vcpu.mutex:
            _reader(vm, slots, None)

    together(vcpu_ioctl_sync, kvm_run, names=["vcpu ioctl", "KVM_RUN"])
    check_graph()


@scenario("srcu.vcpu_mutex_in_reader.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="vcpu->mutex taken inside a kvm->srcu read side",
          invariant="lockdep reports vcpu->mutex -> kvm->srcu -> vcpu->mutex", **_BOUND)
def vcpu_mutex_in_reader() -> None:
    vm = VM(None, nr_vcpus=1)
    vcpu = vm.vcpus[0]
    slots = _Memslots()

    vcpu_ioctl_sync = _sync_update(vm, slots, vcpu.mutex)

    together(vcpu_ioctl_sync, lambda: _reader(vm, slots, vcpu.mutex),
             names=["vcpu ioctl", "vcpu0"])


@scenario("srcu.free_before_grace_period.broken", variant="broken", expect="assertion",
          rule="old memslots freed without waiting for a grace period",
          invariant="a reader inside kvm->srcu uses the freed array", **_BOUND)
def free_before_grace_period() -> None:
    vm = VM(None, nr_vcpus=1)
    slots = _Memslots()

    def hasty_update() -> None:
        with vm.slots_lock:
            with vm.slots_arch_lock:
                old = slots.publish()
            old.free()  # no synchronize_srcu

    together(hasty_update, lambda: _reader(vm, slots, None), names=["memslot updater", "vcpu0"])


@scenario("srcu.slots_lock_in_reader.deadlock", variant="broken", expect="deadlock",
          rule="kvm->slots_lock inside the read side, with lockdep off: the explorer finds the "
               "hang itself (synchronize waits for the reader, the reader for slots_lock)",
          invariant="all tasks blocked", lockdep=False, **_BOUND)
def slots_lock_in_reader_deadlock() -> None:
    _update_vs_reader("slots_lock")
