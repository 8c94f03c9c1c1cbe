"""Section 1 of locking.rst as scenarios: every acquisition order, and "everything else is a leaf".

For each documented order "A is taken outside B" there is a *correct* scenario, in which two
tasks take the pair the documented way through the model's real code paths (plus, where the
model has one, a path taking only one of them), and a *broken* one in which the second task
inverts the pair. lockdep must report the inversion as a circular dependency whichever way the
explorer interleaves the two tasks -- a lock-order bug needs no unlucky timing to be found.

Two graph checks state the section as code, and the correct scenarios run them on the
dependency graph of their own execution:

* :func:`check_orders` -- no dependency contradicts a documented order (or a chain of them);
* :func:`check_leaves` -- no lock outside the documented orders has anything taken inside it.

:func:`together` (spawn tasks, join them) and :func:`check_graph` serve the other modules too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import kvmlock
from kvmlock import lockdep
from kvmlock.kvm.hyperv import HyperV
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.posted_intr import PostedVcpu, post_interrupt
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vm import VM
from kvmlock.kvm.xen import Xen
from kvmlock.scenarios.registry import scenario

__all__ = ["LEAVES", "ORDERS", "check_graph", "check_leaves", "check_orders", "together"]

#: (outer, inner): the documented acquisition orders, canonical class names.
ORDERS: tuple[tuple[str, str], ...] = (
    ("cpu_hotplug_lock", "kvm_lock"),
    ("kvm_usage_lock", "cpu_hotplug_lock"),
    ("vendor_module_lock", "cpu_hotplug_lock"),
    ("kvm->lock", "vcpu->mutex"),
    ("kvm->lock", "kvm->slots_lock"),
    ("kvm->lock", "kvm->irq_lock"),
    ("kvm->slots_lock", "kvm->irq_lock"),
    ("kvm->slots_lock", "kvm->slots_arch_lock"),
    ("vcpu->mutex", "kvm->arch.hyperv.hv_lock"),
    ("vcpu->mutex", "kvm->arch.xen.xen_lock"),
    ("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock"),
    ("kvm->mmu_lock", "kvm->arch.mmu_unsync_pages_lock"),
)

#: Locks with nothing taken inside them ("everything else is a leaf"). ``kvm_lock`` is one:
#: the hotplug lock is outside it, so anything sleeping inside it risks a cycle through
#: ``cpu_hotplug_lock`` (see ``order.kvm_lock_leaf.*``).
LEAVES: frozenset[str] = frozenset({
    "kvm_lock",
    "kvm->irq_lock",
    "kvm->arch.hyperv.hv_lock",
    "kvm->arch.xen.xen_lock",
    "kvm->arch.tdp_mmu_pages_lock",
    "kvm->arch.mmu_unsync_pages_lock",
    "kvm->mn_invalidate_lock",
    "kvm->arch.tsc_write_lock",
    "wakeup_vcpus_on_cpu_lock",
})


def _base(cls: str) -> str:
    """``vcpu->mutex/1`` (a nesting subclass) orders like ``vcpu->mutex``."""
    return cls.split("/", 1)[0]


def _closure(orders: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    after: dict[str, set[str]] = {}
    for a, b in orders:
        after.setdefault(a, set()).add(b)
    out: set[tuple[str, str]] = set()
    for a in list(after):
        stack, seen = [a], set()
        while stack:
            for b in after.get(stack.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        out |= {(a, b) for b in seen}
    return out


_IMPLIED = _closure(ORDERS)


def check_orders(graph: lockdep.DepGraph | Any) -> None:
    """Assert no dependency in ``graph`` runs against a documented order (or chain of them)."""
    bad = sorted({
        f"{e.src} -> {e.dst} (documented: {_base(e.dst)} outside {_base(e.src)}; at {e.where})"
        for e in graph.edges
        if (_base(e.dst), _base(e.src)) in _IMPLIED
    })
    assert not bad, "acquisition order inverted: " + "; ".join(bad)


def check_leaves(graph: lockdep.DepGraph | Any, leaves: Iterable[str] = LEAVES) -> None:
    """Assert nothing is taken inside a leaf lock (an edge leaving a leaf class)."""
    leaves = set(leaves)
    bad = sorted({f"{e.dst} taken inside leaf {e.src} (at {e.where})"
                  for e in graph.edges if _base(e.src) in leaves})
    assert not bad, "a leaf lock is not a leaf: " + "; ".join(bad)


def together(*tasks: Callable[[], object], names: Iterable[str] | None = None) -> None:
    """Run ``tasks`` concurrently (threads or explored tasks) and wait for all of them."""
    names = list(names) if names is not None else [f"CPU{i}" for i in range(len(tasks))]
    handles = [kvmlock.spawn(fn, name=n) for fn, n in zip(tasks, names, strict=True)]
    for h in handles:
        h.join()


def _inverted(outer: Any, inner: Any) -> Callable[[], None]:
    def take() -> None:
        with inner, outer:
            pass
    return take


def _nested(outer: Any, inner: Any) -> Callable[[], None]:
    def take() -> None:
        with outer, inner:
            pass
    return take


def check_graph() -> None:
    g = lockdep.graph()
    check_orders(g)
    check_leaves(g)


# ---------------------------------------------------------------------- global locks

_BOUND = {"max_runs": 400}


@scenario("order.hotplug_kvm_lock.correct", variant="correct", expect="pass",
          rule="cpus_read_lock() is taken outside kvm_lock",
          invariant="every dependency follows the documented orders; leaves stay leaves",
          **_BOUND)
def hotplug_kvm_lock_correct() -> None:
    m = Machine(2)
    together(lambda: m.destroy_vm(m.create_vm()), lambda: m.cpu_down(1), m.cpufreq_notifier)
    m.check_hardware()
    check_graph()


@scenario("order.hotplug_kvm_lock.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="cpus_read_lock() taken inside kvm_lock (walking vm_list into a hotplug read)",
          invariant="lockdep reports kvm_lock -> cpu_hotplug_lock -> kvm_lock", **_BOUND)
def hotplug_kvm_lock_broken() -> None:
    m = Machine(2)

    def walk_vm_list_then_hotplug() -> None:
        with m.kvm_lock, m.cpu_hotplug_lock.read():
            pass

    together(lambda: m.cpu_down(1), walk_vm_list_then_hotplug)


@scenario("order.usage_lock_hotplug.correct", variant="correct", expect="pass",
          rule="kvm_usage_lock is taken outside cpus_read_lock()",
          invariant="every dependency follows the documented orders; hardware state consistent",
          **_BOUND)
def usage_lock_hotplug_correct() -> None:
    m = Machine(2, usage_lock=True)
    together(lambda: m.destroy_vm(m.create_vm()), lambda: m.cpu_down(1))
    m.check_hardware()
    check_graph()


@scenario("order.usage_lock_hotplug.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="kvm_usage_lock taken inside the hotplug lock (an online callback locking it)",
          invariant="lockdep reports kvm_usage_lock -> cpu_hotplug_lock -> kvm_usage_lock",
          **_BOUND)
def usage_lock_hotplug_broken() -> None:
    m = Machine(2, usage_lock=True)
    usage = m.kvm_usage_lock
    assert usage is not None

    def online_callback_taking_usage_lock() -> None:
        with m.cpu_hotplug_lock.write(), usage:
            pass

    together(lambda: m.destroy_vm(m.create_vm()), online_callback_taking_usage_lock)


# ---------------------------------------------------------------------- per-VM mutexes

def _vm() -> VM:
    return VM(None, nr_vcpus=1)


def _pair(name: str, outer: str, inner: str, rule: str,
          get: Callable[[VM], tuple[Any, Any]],
          extra: Callable[[VM], Callable[[], None]] | None = None) -> None:
    """Register the correct/broken pair for the documented order ``outer`` outside ``inner``."""

    def correct() -> None:
        vm = _vm()
        o, i = get(vm)
        tasks = [_nested(o, i), _nested(o, i)]
        if extra is not None:
            tasks.append(extra(vm))
        together(*tasks)
        check_graph()

    def broken() -> None:
        vm = _vm()
        o, i = get(vm)
        together(_nested(o, i), _inverted(o, i))

    correct.__name__ = correct.__qualname__ = f"{name}_correct"
    broken.__name__ = broken.__qualname__ = f"{name}_broken"
    scenario(f"order.{name}.correct", variant="correct", expect="pass", rule=rule,
             invariant=f"{outer} is always taken outside {inner}", **_BOUND)(correct)
    scenario(f"order.{name}.broken", variant="broken", expect="lockdep",
             lockdep_kind="circular", rule=f"{inner} taken outside {outer} (inverted)",
             invariant=f"lockdep reports {outer} -> {inner} -> {outer}", **_BOUND)(broken)


def _hv_write(vm: VM) -> Callable[[], None]:
    hv = HyperV(vm)

    def vcpu_wrmsr() -> None:
        vcpu = vm.vcpus[0]
        with vcpu.mutex:
            hv.set_msr(vcpu, "HV_X64_MSR_REFERENCE_TSC", 1)
    return vcpu_wrmsr


def _xen_write(vm: VM) -> Callable[[], None]:
    xen = Xen(vm)

    def vcpu_set_attr() -> None:
        vcpu = vm.vcpus[0]
        with vcpu.mutex:
            xen.vcpu_set_attr(vcpu, "vcpu_info", 1)
    return vcpu_set_attr


def _mmu_read_side(vm: VM, inner: str) -> Callable[[], None]:
    def fault_under_read_lock() -> None:
        with vm.mmu_lock.read(), getattr(vm, inner):
            pass
    return fault_under_read_lock


_pair("kvm_lock_vcpu_mutex", "kvm->lock", "vcpu->mutex",
      "kvm->lock is taken outside vcpu->mutex",
      lambda vm: (vm.lock, vm.vcpus[0].mutex), _hv_write)
_pair("kvm_lock_slots_lock", "kvm->lock", "kvm->slots_lock",
      "kvm->lock is taken outside kvm->slots_lock",
      lambda vm: (vm.lock, vm.slots_lock))
_pair("kvm_lock_irq_lock", "kvm->lock", "kvm->irq_lock",
      "kvm->lock is taken outside kvm->irq_lock",
      lambda vm: (vm.lock, vm.irq_lock))
_pair("slots_lock_irq_lock", "kvm->slots_lock", "kvm->irq_lock",
      "kvm->slots_lock is taken outside kvm->irq_lock",
      lambda vm: (vm.slots_lock, vm.irq_lock))
_pair("slots_lock_slots_arch_lock", "kvm->slots_lock", "kvm->slots_arch_lock",
      "kvm->slots_lock is taken outside kvm->slots_arch_lock",
      lambda vm: (vm.slots_lock, vm.slots_arch_lock))
_pair("vcpu_mutex_hv_lock", "vcpu->mutex", "kvm->arch.hyperv.hv_lock",
      "vcpu->mutex is taken outside kvm->arch.hyperv.hv_lock",
      lambda vm: (vm.vcpus[0].mutex, vm.hv_lock), _hv_write)
_pair("vcpu_mutex_xen_lock", "vcpu->mutex", "kvm->arch.xen.xen_lock",
      "vcpu->mutex is taken outside kvm->arch.xen.xen_lock",
      lambda vm: (vm.vcpus[0].mutex, vm.xen_lock), _xen_write)


# ---------------------------------------------------------------------- kvm_lock stays a leaf

def _four_paths(hold_kvm_lock: bool, hotplug: bool = False) -> None:
    """The four paths of the 2025 report: each fine alone, deadlocking together.

    ``hotplug`` adds a CPU going offline: its queued write of the hotplug lock is what makes
    the static-key patch's *read* of it actually wait, turning the cycle into a real hang.
    """
    m = Machine(2)
    vm = m.create_vm(nr_vcpus=1)

    def set_memory_region() -> None:
        with vm.slots_lock:
            vm.srcu.synchronize()

    def kvm_run() -> None:
        with vm.srcu.read():
            m.static_key_update()

    tasks = [set_memory_region, lambda: m.update_nx_huge_pages(hold_kvm_lock=hold_kvm_lock),
             m.cpufreq_notifier, kvm_run]
    names = ["KVM_SET_USER_MEMORY_REGION", "nx_huge_pages write", "cpufreq notifier", "KVM_RUN"]
    if hotplug:
        tasks.append(lambda: m.cpu_down(1))
        names.append("cpu hotplug")
    together(*tasks, names=names)


@scenario("order.kvm_lock_leaf.correct", variant="correct", expect="pass",
          rule="kvm_lock is a leaf: walkers of vm_list take a reference and drop kvm_lock "
               "before taking a VM's slots_lock",
          invariant="no cycle through kvm_lock; every dependency follows the documented orders",
          max_runs=3000, timeout=60.0)
def kvm_lock_leaf_correct() -> None:
    _four_paths(hold_kvm_lock=False)
    check_graph()


@scenario("order.kvm_lock_leaf.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="slots_lock taken under kvm_lock while walking vm_list (NX huge pages), with a "
               "memslot update, a cpufreq notifier and a static-key patch under kvm->srcu",
          invariant="lockdep reports the four-lock cycle kvm_lock -> kvm->slots_lock -> "
                    "kvm->srcu -> cpu_hotplug_lock -> kvm_lock", max_runs=400)
def kvm_lock_leaf_broken() -> None:
    _four_paths(hold_kvm_lock=True)


@scenario("order.kvm_lock_leaf.deadlock", variant="broken", expect="deadlock",
          rule="the same four paths plus a CPU going offline, lockdep off: the explorer finds "
               "the five-task hang itself",
          invariant="all tasks blocked: the cycle lockdep reports is a real deadlock",
          lockdep=False, max_runs=5000, timeout=60.0)
def kvm_lock_leaf_deadlock() -> None:
    _four_paths(hold_kvm_lock=True, hotplug=True)


# ---------------------------------------------------------------------- vCPU planes

def _planes() -> tuple[Any, Any]:
    """One vCPU id in plane 0 and plane 1: two ``vcpu->mutex`` instances of one class."""
    from kvmlock.kvm.vcpu import VCPU

    vm = _vm()
    return vm.vcpus[0], VCPU(vm, 0)


def _plane0_then_plane1(p0: Any, p1: Any) -> Callable[[], None]:
    def take() -> None:
        with p0.mutex, p1.mutex.nested(1):
            pass
    return take


@scenario("order.vcpu_mutex_planes.correct", variant="correct", expect="pass",
          rule="vcpu->mutex of plane 0 is taken outside vcpu->mutex of the same id in another "
               "plane (annotated as a nesting subclass)",
          invariant="plane 0 always first; lockdep sees one class nested by annotation", **_BOUND)
def vcpu_mutex_planes_correct() -> None:
    p0, p1 = _planes()
    together(_plane0_then_plane1(p0, p1), _plane0_then_plane1(p0, p1))
    check_graph()


@scenario("order.vcpu_mutex_planes.broken", variant="broken", expect="lockdep",
          lockdep_kind="recursive",
          rule="two planes' vcpu->mutex nested without the subclass annotation",
          invariant="lockdep reports possible recursive locking of vcpu->mutex", **_BOUND)
def vcpu_mutex_planes_unannotated() -> None:
    p0, p1 = _planes()
    with p0.mutex, p1.mutex:
        pass


@scenario("order.vcpu_mutex_planes.inverted", variant="broken", expect="deadlock",
          rule="plane 1 taken outside plane 0 behind the same annotation: lockdep sees one "
               "consistent order of classes, the explorer sees the deadlock",
          invariant="all tasks blocked: an annotation cannot make an inversion safe", **_BOUND)
def vcpu_mutex_planes_inverted() -> None:
    p0, p1 = _planes()
    together(_plane0_then_plane1(p0, p1), _plane0_then_plane1(p1, p0))


# ---------------------------------------------------------------------- mmu_lock sub-locks

def _mmu_pair(name: str, inner: str) -> None:
    cls = f"kvm->arch.{inner}"

    def correct() -> None:
        vm = _vm()
        together(_mmu_read_side(vm, inner), _nested(vm.mmu_lock.write(), getattr(vm, inner)))
        check_graph()

    def broken() -> None:
        vm = _vm()
        together(_mmu_read_side(vm, inner), _inverted(vm.mmu_lock.write(), getattr(vm, inner)))

    def without_mmu_lock() -> None:
        vm = _vm()
        with_lock_held(vm, inner)

    correct.__name__ = f"{name}_correct"
    broken.__name__ = f"{name}_broken"
    without_mmu_lock.__name__ = f"{name}_without_mmu_lock"
    scenario(f"order.{name}.correct", variant="correct", expect="pass",
             rule=f"{cls} is taken inside kvm->mmu_lock (read or write)",
             invariant=f"kvm->mmu_lock is always outside {cls}", **_BOUND)(correct)
    scenario(f"order.{name}.broken", variant="broken", expect="lockdep",
             lockdep_kind="circular", rule=f"{cls} taken outside kvm->mmu_lock (inverted)",
             invariant=f"lockdep reports kvm->mmu_lock -> {cls} -> kvm->mmu_lock",
             **_BOUND)(broken)
    scenario(f"order.{name}.without_mmu_lock", variant="broken", expect="lockdep",
             lockdep_kind="not_held", rule=f"{cls} taken without kvm->mmu_lock held",
             invariant="the helper's lockdep_assert_held(mmu_lock) reports it",
             **_BOUND)(without_mmu_lock)


def with_lock_held(vm: VM, inner: str) -> None:
    """Take an mmu_lock sub-lock the way MMU code does: asserting ``mmu_lock`` is held first."""
    vm.mmu_lock.assert_held()
    with getattr(vm, inner):
        pass


_mmu_pair("mmu_lock_tdp_mmu_pages_lock", "tdp_mmu_pages_lock")
_mmu_pair("mmu_lock_mmu_unsync_pages_lock", "mmu_unsync_pages_lock")


# ---------------------------------------------------------------------- everything else is a leaf

@scenario("order.leaves.correct", variant="correct", expect="pass",
          rule="everything else is a leaf: nothing is taken inside the other locks",
          invariant="no dependency leaves a leaf lock; no dependency inverts a documented order",
          max_runs=300)
def leaves_correct() -> None:
    m = Machine(2)
    vm = m.create_vm(nr_vcpus=2)
    tsc = TscSync(vm)
    hv, xen = HyperV(vm), Xen(vm)
    pv = PostedVcpu(m, vm.vcpus[1], cpu=1)

    def vcpu0() -> None:
        vcpu = vm.vcpus[0]
        with vcpu.mutex:
            tsc.write(vcpu, 0, 1000)
            hv.set_msr(vcpu, "HV_X64_MSR_GUEST_OS_ID", 7)
            xen.vcpu_set_attr(vcpu, "runstate", 1)
        with vm.mn_invalidate_lock:
            vm.mn_active_invalidate_count += 1
        with vm.mn_invalidate_lock:
            vm.mn_active_invalidate_count -= 1

    def host() -> None:
        xen.hvm_set_attr("upcall_vector", 3)
        post_interrupt(pv, 5)
        with vm.slots_lock, vm.irq_lock:
            pass

    together(vcpu0, host, pv.block, names=["vcpu0", "host", "vcpu1"])
    assert pv.delivered == {5}, f"posted vector lost: delivered {pv.delivered}"
    tsc.check()
    check_graph()


@scenario("order.leaves.hv_lock_nests.broken", variant="broken", expect="assertion",
          rule="a leaf lock with another lock taken inside it (kvm->irq_lock under hv_lock)",
          invariant="check_leaves finds the edge leaving kvm->arch.hyperv.hv_lock", max_runs=50)
def leaves_hv_lock_nests_broken() -> None:
    vm = _vm()
    vcpu = vm.vcpus[0]
    with vcpu.mutex, vm.hv_lock, vm.irq_lock:
        pass
    check_graph()


@scenario("order.leaves.tsc_write_lock_sleeps.broken", variant="broken", expect="lockdep",
          lockdep_kind="sleep_in_atomic",
          rule="a sleeping lock taken inside the raw tsc_write_lock",
          invariant="lockdep reports the mutex acquired in atomic context", max_runs=50)
def leaves_tsc_write_lock_sleeps_broken() -> None:
    vm = _vm()
    vcpu = vm.vcpus[0]
    with vcpu.mutex, vm.tsc_write_lock, vm.hv_lock:
        pass
