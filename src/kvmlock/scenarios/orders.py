"""The acquisition orders of the model's locking document, as scenarios through its real paths.

The rules come from one place, ``kvmlock/kvm/locking.rst`` (read by
:func:`kvmlock.spec.design.model_spec`); this module only says which of the model's real code
paths take each documented pair, and how each path's order is broken:

* ``order.<outer>.<inner>.correct`` runs the paths concurrently and then checks the run's lock
  graph against the *whole* document (:func:`check_graph`: orders, leaves, SRCU rules, lock
  kinds, no undocumented lock). It also requires that the pair's own rule was exercised -- the
  paths really took ``outer`` outside ``inner`` -- so it cannot pass by taking nothing.
* ``order.<outer>.<inner>.broken`` runs the same paths with the :class:`Hazards` switch that
  inverts the order inside one of them, and lockdep or the graph check must catch it.
* ``order.<outer>.<inner>.without_<outer>`` (the "only with mmu_lock held" rules) runs them
  with the mutant that takes ``inner`` without ``outer`` inside one of them, and the MMU
  helper's ``lockdep_assert_held`` must report it.

An order rule the document gains without a path here becomes a correct scenario that fails,
saying so: the document can never state an order that nothing checks.

:func:`together` (spawn tasks, join them) and :func:`check_graph` serve the other modules too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kvmlock
from kvmlock import lockdep
from kvmlock.kvm import ioctls
from kvmlock.kvm.guest import GuestFault, guest_write, set_gpte
from kvmlock.kvm.hyperv import HyperV
from kvmlock.kvm.iobus import mmio_write
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.mmu.page_fault import page_fault
from kvmlock.kvm.mmu.shadow import check_rmaps
from kvmlock.kvm.mutants import Hazards, hazards_of
from kvmlock.kvm.planes import PlaneVcpu, plane_vcpu_set_config, run_in_plane
from kvmlock.kvm.posted_intr import PostedVcpu, post_interrupt, send_wakeup_vector
from kvmlock.kvm.tsc import KvmClock, TscSync
from kvmlock.kvm.vendor import VendorModuleError, vendor_init
from kvmlock.kvm.vm import VM
from kvmlock.kvm.xen import Xen
from kvmlock.scenarios.registry import scenario
from kvmlock.spec import check as spec_check
from kvmlock.spec.check import HELD
from kvmlock.spec.design import model_spec, order_rules
from kvmlock.sync import peek

__all__ = ["PATHS", "OrderPaths", "check_graph", "together", "try_gsi_routing"]


def check_graph(graph: Any = None, *, exercised: Iterable[tuple[str, str, str]] = ()) -> None:
    """Assert the run's lock graph conforms to the model's locking document.

    Every rule of the document (orders and their chains, leaves, SRCU rules, lock kinds) is
    checked by :func:`kvmlock.spec.check`, and every lock in the run must be documented.
    ``exercised`` names rules ``(kind, outer, inner)`` the run must have *held*, not merely not
    violated (for SRCU rules ``outer`` is the lock, ``inner`` the SRCU).
    """
    doc = model_spec()
    conf = spec_check(doc, lockdep.graph() if graph is None else graph)
    bad = [f"{r.rule.describe()} (locking.rst:{r.rule.line}): {r.detail}"
           f"{' via ' + ' => '.join(e.show() for e in r.path) if r.path else ''}"
           f"{' at ' + r.where if r.where else ''}" for r in conf.violations]
    bad += [f"{t.entry.name} is documented as {t.entry.type_text} but the run built a {t.actual}"
            for t in conf.types if t.status == "violated"]
    bad += [f"{name} ({kind}) is not in the model's locking document"
            for name, kind in conf.undocumented]
    assert not bad, "the run breaks the model's locking document: " + "; ".join(bad)
    status = {_key(r.rule): r.status for r in conf.results}
    for key in exercised:
        assert status.get(key) == HELD, (
            f"rule {' '.join(key)} was not exercised by the run "
            f"(status: {status.get(key, 'no such rule in the document')})")


def _key(rule: Any) -> tuple[str, str, str]:
    if rule.kind == "srcu_read_ok":
        return (rule.kind, rule.inner, rule.srcu)
    if rule.kind == "srcu_sync_inside":
        return (rule.kind, rule.outer, rule.srcu)
    return (rule.kind, rule.outer, rule.inner)


def together(*tasks: Callable[[], object], names: Iterable[str] | None = None) -> list[object]:
    """Run ``tasks`` concurrently (threads or explored tasks), wait for all of them, and
    return what each returned, in the order given. Each task stores its result in a slot of
    its own, so collecting them orders nothing between the tasks (a shared list they all
    append to would: its order is one the search does not vary)."""
    names = list(names) if names is not None else [f"CPU{i}" for i in range(len(tasks))]
    results: list[object] = [None] * len(tasks)

    def slot(i: int, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            results[i] = fn()
        return run

    handles = [kvmlock.spawn(slot(i, fn), name=n)
               for i, (fn, n) in enumerate(zip(tasks, names, strict=True))]
    for h in handles:
        h.join()
    return results


# ---------------------------------------------------------------------- the real paths per order

_BOUND = {"max_runs": 400}


#: A run: the tasks (name -> body) and the check of what they did, once all have finished.
Run = tuple[dict[str, Callable[[], object]], Callable[[], None]]


@dataclass(frozen=True)
class OrderPaths:
    """The model's paths that take one documented pair, and how one of them inverts it.

    ``build(hazards)`` makes fresh model objects and returns the tasks; ``hazard`` names the
    mutant (:mod:`kvmlock.kvm.mutants`) that inverts the order inside one of those paths: the
    broken variant runs the same tasks with it applied, and the correct variant must catch it.
    """

    build: Callable[[Hazards], Run]
    what: str  # the real paths, in words
    hazard: str
    broken_rule: str = ""
    lockdep_kind: str = "circular"
    max_runs: int = 400


def _nothing() -> None:
    pass


def _hotplug_kvm_lock(h: Hazards) -> Run:
    m = Machine(2, hazards=h)
    return ({"create+destroy VM": lambda: m.destroy_vm(m.create_vm()),
             "cpu hotplug": lambda: m.cpu_down(1), "cpufreq notifier": m.cpufreq_notifier},
            m.check_hardware)


def _usage_lock_hotplug(h: Hazards) -> Run:
    m = Machine(2, usage_lock=True, hazards=h)
    return ({"create+destroy VM": lambda: m.destroy_vm(m.create_vm()),
             "cpu hotplug": lambda: m.cpu_down(1)}, m.check_hardware)


def _vendor_hotplug(h: Hazards) -> Run:
    m = Machine(2, hazards=h)

    def load(name: str) -> Callable[[], None]:
        def modprobe() -> None:
            try:
                vendor_init(m, name)
            except VendorModuleError:
                pass  # the other vendor won: EEXIST
        return modprobe

    def one_loaded() -> None:
        assert m.vendor in ("kvm_intel", "kvm_amd"), f"no vendor module loaded: {m.vendor}"

    return ({"modprobe kvm_intel": load("kvm_intel"), "modprobe kvm_amd": load("kvm_amd"),
             "cpu hotplug": lambda: m.cpu_down(1)}, one_loaded)


def _kvm_lock_tsc(h: Hazards) -> Run:
    m = Machine(2, hazards=h)
    vm = m.create_vm(nr_vcpus=1)
    tsc = TscSync(vm)

    def set_tsc() -> None:
        vcpu = vm.vcpus[0]
        with vcpu.mutex:
            tsc.write(vcpu, 0, 1000)

    def after() -> None:
        tsc.check()
        assert peek(vm, "hv_tsc_page_updates") == 1, "the Hyper-V notifier missed the VM"

    return ({"hyperv clock notifier": m.hyperv_tsc_notifier, "vcpu0 KVM_SET_TSC": set_tsc,
             "cpufreq notifier": m.cpufreq_notifier}, after)


def _kvm_lock_vcpu_mutex(h: Hazards) -> Run:
    vm = VM(None, nr_vcpus=2, hazards=h)
    v0, v1 = vm.vcpus
    return ({"VM ioctl (all vCPUs)": lambda: ioctls.set_vcpus_config(vm, "tsc_khz", 1),
             "vcpu0 ioctl": lambda: ioctls.vcpu_set_config(v0, "cpuid", 1),
             "vcpu1 ioctl": lambda: ioctls.vcpu_set_config(v1, "cpuid", 2)},
            lambda: ioctls.check_vcpus_config(vm, "tsc_khz"))


def _irqchip(h: Hazards, *, with_routing: bool) -> Run:
    vm = VM(None, nr_vcpus=1, hazards=h)
    routed: list[bool] = []
    second: dict[str, Callable[[], object]] = (
        {"KVM_SET_GSI_ROUTING": lambda: routed.append(try_gsi_routing(vm, ("ioapic",)))}
        if with_routing else
        {"KVM_IOEVENTFD": lambda: ioctls.assign_ioeventfd(vm, 0x1000)})

    def after() -> None:
        devices = ioctls.bus_devices(vm)
        assert {"pic", "ioapic"} <= set(devices), f"irqchip devices missing: {devices}"
        ours = bool(routed and routed[0])
        want = ("ioapic",) if ours else ("pic", "ioapic")
        why = " (KVM_SET_GSI_ROUTING succeeded: its routes are final)" if ours else ""
        assert peek(vm, "irq_routing") == want, (
            f"interrupt routes {peek(vm, 'irq_routing')}, not {want}{why}")

    return ({"KVM_CREATE_IRQCHIP": lambda: ioctls.create_irqchip(vm), **second,
             "vcpu0 PIO exit": lambda: _pio_exit(vm.vcpus[0])}, after)


def try_gsi_routing(vm: VM, routes: tuple[str, ...]) -> bool:
    """KVM_SET_GSI_ROUTING; before KVM_CREATE_IRQCHIP it is refused (EINVAL, False), which is
    fine."""
    try:
        ioctls.set_gsi_routing(vm, routes)
    except ValueError:
        assert not vm.irqchip.peek(), "KVM_SET_GSI_ROUTING refused with an irqchip in place"
        return False
    return True


def _pio_exit(vcpu: Any) -> None:
    """A vCPU's port I/O exit to the PIC, inside KVM_RUN (it reads the bus under kvm->srcu)."""
    ioctls.kvm_run(vcpu, lambda v: mmio_write(v, ioctls.PIC, 1))


def _pit(h: Hazards) -> Run:
    vm = VM(None, nr_vcpus=1, hazards=h)
    ioctls.create_irqchip(vm)

    def after() -> None:
        assert peek(vm, "irq_ack_notifiers") == ["pit"] and "pit" in ioctls.bus_devices(vm)

    return ({"KVM_CREATE_PIT2": lambda: ioctls.create_pit(vm),
             "KVM_SET_GSI_ROUTING": lambda: ioctls.set_gsi_routing(vm, ("pit",))}, after)


def _apic_access_vm(h: Hazards, **kw: Any) -> VM:
    vm = VM(None, nr_vcpus=2, nr_pages=4, host_pages=4, hazards=h, **kw)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    vm.set_memory_region(ioctls.APIC_ACCESS_SLOT, base_gfn=3, npages=1, hva=3)
    return vm


def _vcpu_mutex_memslots(h: Hazards) -> Run:
    vm = _apic_access_vm(h)
    v0, v1 = vm.vcpus

    def after() -> None:
        assert vm.memslots.access_pointer().by_id(ioctls.APIC_ACCESS_SLOT) is None

    return ({"vcpu0 KVM_RUN (APICv inhibited)":
             lambda: ioctls.kvm_run(v0, ioctls.inhibit_apic_access_page),
             "vcpu1 KVM_RUN (ioctl)": lambda: ioctls.vcpu_set_config(v1, "cpuid", 1),
             "KVM_SET_USER_MEMORY_REGION": lambda: vm.set_memory_region(1, base_gfn=2, npages=1,
                                                                        hva=2)}, after)


def _shadow_vm(h: Hazards) -> VM:
    vm = VM(None, nr_vcpus=1, nr_pages=4, host_pages=4, tdp=False, hazards=h)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    return vm


def _fault(vcpu: Any, va: int) -> Callable[[], None]:
    def run() -> None:
        try:
            ioctls.kvm_run(vcpu, lambda v: guest_write(v, va, 1))
        except GuestFault:
            pass  # the guest touched memory no memslot backs: an MMIO exit
    return run


def _slots_arch_lock(h: Hazards) -> Run:
    vm = _shadow_vm(h)
    vm.mmu.gpt[0].store(1)  # the guest maps page 0 to gfn 0, before any shadow root exists
    return ({"vcpu0 KVM_RUN (first shadow root)": _fault(vm.vcpus[0], 0),
             "KVM_SET_USER_MEMORY_REGION": lambda: vm.set_memory_region(1, base_gfn=2, npages=1,
                                                                        hva=2)},
            lambda: check_rmaps(vm))


def _mn_invalidate(h: Hazards) -> Run:
    vm = VM(None, nr_vcpus=1, nr_pages=2, host_pages=2, hazards=h)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.host.fault_in(0)
    return ({"KVM_SET_USER_MEMORY_REGION": lambda: vm.set_memory_region(1, base_gfn=1, npages=1,
                                                                        hva=1),
             "host reclaim": lambda: vm.host.swap_out(0)}, _nothing)


def _vcpus_msr(h: Hazards, *, xen: bool) -> Run:
    vm = VM(None, nr_vcpus=2, hazards=h)
    v0, v1 = vm.vcpus
    if xen:
        x = Xen(vm)

        def vcpu0() -> None:
            with v0.mutex:
                x.vcpu_set_attr(v0, "vcpu_info", 1)

        return ({"vcpu0 KVM_XEN_VCPU_SET_ATTR": vcpu0,
                 "KVM_XEN_HVM_SET_ATTR": lambda: x.hvm_set_attr("upcall_vector", 3)},
                lambda: None)
    hv = HyperV(vm)

    def wrmsr(vcpu: Any, msr: str) -> Callable[[], None]:
        def run() -> None:
            with vcpu.mutex:
                hv.set_msr(vcpu, msr, 1)
        return run

    return ({"vcpu0 WRMSR": wrmsr(v0, "HV_X64_MSR_REFERENCE_TSC"),
             "vcpu1 WRMSR": wrmsr(v1, "HV_X64_MSR_GUEST_OS_ID"),
             "KVM_HYPERV_EVENTFD": lambda: hv.eventfd_assign(1)},
            lambda: None)


def _tdp_faults(h: Hazards) -> Run:
    vm = VM(None, nr_vcpus=2, nr_pages=2, host_pages=2, hazards=h)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    v0, v1 = vm.vcpus
    return ({"vcpu0 TDP fault": lambda: page_fault(v0, 0, True),
             "vcpu1 TDP fault": lambda: page_fault(v1, 1, False),
             "zap all": vm.mmu.zap_all}, vm.mmu.check_pages)


def _shadow_unsync(h: Hazards) -> Run:
    vm = _shadow_vm(h)
    return ({"guest INVLPG": lambda: set_gpte(vm, 0, 1),
             "vcpu0 shadow fault": lambda: page_fault(vm.vcpus[0], 1, False)}, _nothing)


#: (outer, inner) of every order rule in the model's document -> the paths that take it.
PATHS: dict[tuple[str, str], OrderPaths] = {
    ("cpu_hotplug_lock", "kvm_lock"): OrderPaths(
        _hotplug_kvm_lock, "VM create/destroy, CPU offline and the cpufreq notifier",
        "cpufreq_hotplug_inside_kvm_lock",
        broken_rule="the cpufreq notifier takes cpus_read_lock inside kvm_lock"),
    ("kvm_usage_lock", "cpu_hotplug_lock"): OrderPaths(
        _usage_lock_hotplug, "VM create/destroy and CPU offline (kvm_usage_lock design)",
        "usage_lock_inside_hotplug",
        broken_rule="enabling virtualization takes kvm_usage_lock inside cpus_read_lock"),
    ("vendor_module_lock", "cpu_hotplug_lock"): OrderPaths(
        _vendor_hotplug, "two vendor modules loading while a CPU goes offline",
        "vendor_lock_inside_hotplug",
        broken_rule="vendor init takes vendor_module_lock inside cpus_read_lock"),
    ("kvm_lock", "kvm->arch.tsc_write_lock"): OrderPaths(
        _kvm_lock_tsc, "the Hyper-V clock notifier, a vCPU's TSC write, the cpufreq notifier",
        "tsc_write_walks_vm_list", lockdep_kind="sleep_in_atomic",
        broken_rule="a TSC write walks vm_list (kvm_lock) under the raw tsc_write_lock"),
    ("kvm->lock", "vcpu->mutex"): OrderPaths(
        _kvm_lock_vcpu_mutex, "a VM ioctl locking every vCPU, and two vCPU ioctls",
        "vcpu_ioctl_takes_kvm_lock", broken_rule="a vCPU ioctl takes kvm->lock"),
    ("kvm->lock", "kvm->slots_lock"): OrderPaths(
        lambda h: _irqchip(h, with_routing=False),
        "KVM_CREATE_IRQCHIP, KVM_IOEVENTFD and a PIO exit reading the bus",
        "ioeventfd_takes_kvm_lock", broken_rule="KVM_IOEVENTFD takes kvm->lock under slots_lock"),
    ("kvm->lock", "kvm->irq_lock"): OrderPaths(
        lambda h: _irqchip(h, with_routing=True),
        "KVM_CREATE_IRQCHIP, KVM_SET_GSI_ROUTING and a PIO exit reading the bus",
        "routing_takes_kvm_lock", broken_rule="KVM_SET_GSI_ROUTING takes kvm->lock under irq_lock"),
    ("vcpu->mutex", "kvm->slots_lock"): OrderPaths(
        _vcpu_mutex_memslots,
        "KVM_RUN deleting the APIC-access memslot, a vCPU ioctl, a memslot create",
        "memslot_update_locks_vcpus",
        broken_rule="a memslot create locks every vCPU under slots_lock"),
    ("vcpu->mutex", "kvm->slots_arch_lock"): OrderPaths(
        _vcpu_mutex_memslots,
        "KVM_RUN deleting the APIC-access memslot, a vCPU ioctl, a memslot create",
        "memslot_commit_locks_vcpus",
        broken_rule="a memslot create locks every vCPU under slots_arch_lock"),
    ("kvm->slots_lock", "kvm->irq_lock"): OrderPaths(
        _pit, "KVM_CREATE_PIT2 and KVM_SET_GSI_ROUTING", "pit_slots_lock_inside_irq_lock",
        broken_rule="the PIT registers its I/O device with irq_lock held"),
    ("kvm->slots_lock", "kvm->slots_arch_lock"): OrderPaths(
        _slots_arch_lock, "a memslot create racing the first shadow root (KVM_RUN)",
        "root_alloc_takes_slots_lock",
        broken_rule="the first shadow root takes slots_lock under slots_arch_lock"),
    ("kvm->slots_arch_lock", "kvm->mn_invalidate_lock"): OrderPaths(
        _mn_invalidate, "a memslot create racing a host reclaim (MMU notifier)",
        "notifier_takes_slots_arch_lock", lockdep_kind="sleep_in_atomic",
        broken_rule="invalidate_range_start takes slots_arch_lock under mn_invalidate_lock"),
    ("vcpu->mutex", "kvm->arch.hyperv.hv_lock"): OrderPaths(
        lambda h: _vcpus_msr(h, xen=False),
        "two vCPUs writing partition-wide Hyper-V MSRs, and KVM_HYPERV_EVENTFD",
        "hv_lock_locks_vcpus", broken_rule="KVM_HYPERV_EVENTFD locks every vCPU under hv_lock"),
    ("vcpu->mutex", "kvm->arch.xen.xen_lock"): OrderPaths(
        lambda h: _vcpus_msr(h, xen=True), "a vCPU and a VM Xen attribute write",
        "xen_lock_locks_vcpus", broken_rule="a VM-wide Xen attribute write locks every vCPU"),
    ("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock"): OrderPaths(
        _tdp_faults, "two TDP faults building shadow pages (mmu_lock read) and a zap of all",
        "pages_lock_outside_mmu_lock",
        broken_rule="zap_all holds tdp_mmu_pages_lock from before mmu_lock"),
    ("kvm->mmu_lock", "kvm->arch.mmu_unsync_pages_lock"): OrderPaths(
        _shadow_unsync, "a guest page-table change (unsync/sync) and a shadow fault",
        "sync_takes_unsync_lock_first",
        broken_rule="the INVLPG sync takes mmu_unsync_pages_lock before mmu_lock"),
}


def _slug(name: str) -> str:
    """A lock's part of a scenario name: ``kvm->lock`` is ``vm_lock`` (``kvm_lock`` is global)."""
    special = {"kvm->lock": "vm_lock", "vcpu->mutex": "vcpu_mutex"}
    return special.get(name) or re.sub(r"^kvm->(?:arch\.(?:hyperv\.|xen\.)?)?", "", name)


def _run(build: Callable[[Hazards], Run], hazards: Hazards) -> None:
    tasks, after = build(hazards)
    together(*tasks.values(), names=list(tasks))
    after()


#: other mutants these paths catch: lock kinds the document's kind check sees, a leaf the
#: document's leaf check sees left, a lock taken without the one it requires
_ALSO_CATCHES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu_hotplug_lock", "kvm_lock"): ("kvm_lock_spinlock",),
    ("kvm->lock", "vcpu->mutex"): ("vm_lock_spinlock",),
    ("vcpu->mutex", "kvm->arch.hyperv.hv_lock"): ("hv_ref_tsc_update_under_hv_lock",),
    # the "only with mmu_lock held" rules of the same pairs (REQUIRES_PATHS below)
    ("kvm->mmu_lock", "kvm->arch.tdp_mmu_pages_lock"): ("unlink_page_at_free",),
    ("kvm->mmu_lock", "kvm->arch.mmu_unsync_pages_lock"): ("unsync_before_mmu_lock",),
}


def _register(outer: str, inner: str, line: int) -> None:
    name = f"order.{_slug(outer)}.{_slug(inner)}"
    paths = PATHS.get((outer, inner))
    rule = f"{outer} is taken outside {inner} (locking.rst:{line})"
    if paths is None:
        def unexercised() -> None:
            raise AssertionError(f"the document orders {outer} outside {inner}, but no model "
                                 "path takes them (add one to scenarios.orders.PATHS)")
        scenario(f"{name}.correct", variant="correct", expect="pass", rule=rule,
                 invariant="a model path takes the pair", max_runs=1)(unexercised)
        return

    def correct() -> None:
        _run(paths.build, Hazards())
        check_graph(exercised=[("order", outer, inner)])

    correct.__name__ = correct.__qualname__ = f"{name.replace('.', '_')}_correct"
    scenario(f"{name}.correct", variant="correct", expect="pass", rule=rule,
             invariant=f"through {paths.what}: the run conforms to the model's document and "
                       f"takes {outer} outside {inner}", max_runs=paths.max_runs,
             catches=(paths.hazard, *_ALSO_CATCHES.get((outer, inner), ())))(correct)
    hazard = hazards_of({paths.hazard: True})

    def broken() -> None:
        _run(paths.build, hazard)

    what = f"the same paths with mutant {paths.hazard}"
    broken.__name__ = broken.__qualname__ = f"{name.replace('.', '_')}_broken"
    scenario(f"{name}.broken", variant="broken", expect="lockdep",
             lockdep_kind=paths.lockdep_kind, rule=paths.broken_rule,
             invariant=f"{what}: lockdep reports {paths.lockdep_kind}",
             max_runs=paths.max_runs)(broken)


for _rule in order_rules():
    _register(_rule.outer, _rule.inner, _rule.line)


# ---------------------------------------------------------------------- "only with mmu_lock held"

#: inner lock of a "requires" rule -> the order's real paths, the mutant that takes the lock
#: without mmu_lock inside one of them, and where
REQUIRES_PATHS: dict[str, tuple[Callable[[Hazards], Run], str, str]] = {
    "kvm->arch.tdp_mmu_pages_lock": (
        _tdp_faults, "unlink_page_at_free",
        "zap_all's RCU callback takes each freed page off the page list"),
    "kvm->arch.mmu_unsync_pages_lock": (
        _shadow_unsync, "unsync_before_mmu_lock",
        "the guest page-table change marks its shadow page unsync before taking mmu_lock"),
}


def _register_requires(outer: str, inner: str, line: int) -> None:
    build, hazard, where = REQUIRES_PATHS[inner]
    order = f"order.{_slug(outer)}.{_slug(inner)}"
    hazards = hazards_of({hazard: True})

    def broken() -> None:
        _run(build, hazards)

    broken.__name__ = broken.__qualname__ = f"{order.replace('.', '_')}_without_{_slug(outer)}"
    scenario(f"{order}.without_{_slug(outer)}", variant="broken", expect="lockdep",
             lockdep_kind="not_held",
             rule=f"{inner} taken without {outer} held (locking.rst:{line}): {where}",
             invariant=f"the paths of {order}.correct with mutant {hazard}: the MMU helper's "
                       f"lockdep_assert_held({outer}) reports it", max_runs=50)(broken)


for _rule in model_spec().rules:
    if _rule.kind == "requires":
        _register_requires(_rule.outer, _rule.inner, _rule.line)

# ---------------------------------------------------------------------- walking vm_list

# kvm_lock is not a leaf (the raw tsc_write_lock nests inside it), but nothing that can wait for
# the hotplug lock or for an SRCU grace period may: the document says "kvm_lock must not take
# kvm->slots_lock", and these scenarios show why.

def _four_paths(hold_kvm_lock: bool, hotplug: bool = False) -> None:
    """The four paths of the 2025 report: each fine alone, deadlocking together.

    ``hotplug`` adds a CPU going offline: its queued write of the hotplug lock is what makes
    the static-key patch's *read* of it actually wait, turning the cycle into a real hang.
    """
    m = Machine(2, hazards={"nx_walk_holds_kvm_lock"} if hold_kvm_lock else None)
    vm = m.create_vm(nr_vcpus=1)

    def set_memory_region() -> None:
        with vm.slots_lock:
            vm.srcu.synchronize()

    def kvm_run() -> None:
        with vm.srcu.read():
            m.static_key_update()

    tasks = [set_memory_region, m.update_nx_huge_pages,
             m.cpufreq_notifier, kvm_run]
    names = ["KVM_SET_USER_MEMORY_REGION", "nx_huge_pages write", "cpufreq notifier", "KVM_RUN"]
    if hotplug:
        tasks.append(lambda: m.cpu_down(1))
        names.append("cpu hotplug")
    together(*tasks, names=names)


@scenario("order.kvm_lock_walk.correct", variant="correct", expect="pass",
          rule="kvm_lock must not take kvm->slots_lock: walkers of vm_list take a reference "
               "and drop kvm_lock before taking a VM's slots_lock",
          invariant="no cycle through kvm_lock; the run conforms to the model's document",
          catches=("nx_walk_holds_kvm_lock",), max_runs=3000)
def kvm_lock_walk_correct() -> None:
    _four_paths(hold_kvm_lock=False)
    check_graph()


@scenario("order.kvm_lock_walk.broken", variant="broken", expect="lockdep",
          lockdep_kind="circular",
          rule="slots_lock taken under kvm_lock while walking vm_list (NX huge pages), with a "
               "memslot update, a cpufreq notifier and a static-key patch under kvm->srcu",
          invariant="lockdep reports the four-lock cycle kvm_lock -> kvm->slots_lock -> "
                    "kvm->srcu -> cpu_hotplug_lock -> kvm_lock", max_runs=400)
def kvm_lock_walk_broken() -> None:
    _four_paths(hold_kvm_lock=True)


@scenario("order.kvm_lock_walk.deadlock", variant="broken", expect="deadlock",
          rule="the same four paths plus a CPU going offline, lockdep off: the explorer finds "
               "the five-task hang itself",
          invariant="all tasks blocked: the cycle lockdep reports is a real deadlock",
          lockdep=False, max_runs=5000)
def kvm_lock_walk_deadlock() -> None:
    _four_paths(hold_kvm_lock=True, hotplug=True)


# ---------------------------------------------------------------------- vCPU planes

def _planes(hazards: Hazards) -> Run:
    """vCPU 0 in planes 0 and 1: KVM_RUN on plane 0 entering plane 1, and a plane-1 ioctl."""
    vm = VM(None, nr_vcpus=1, hazards=hazards)
    p1 = PlaneVcpu(vm.vcpus[0], 1)

    def after() -> None:
        state = peek(p1, "config")
        assert state == {"cpuid": 1, "exits": 1}, f"plane-1 vCPU state: {state}"
        assert peek(vm.vcpus[0], "config").get("plane1.cpuid") == 1, \
            "plane 0 missed the plane-1 change"

    def exit_in_plane1(v: Any) -> None:
        v.config["exits"] = v.config.get("exits", 0) + 1

    return ({"vcpu0 KVM_RUN (plane 1)": lambda: run_in_plane(p1, exit_in_plane1),
             "plane-1 vcpu0 ioctl": lambda: plane_vcpu_set_config(p1, "cpuid", 1)}, after)


@scenario("order.vcpu_mutex_planes.correct", variant="correct", expect="pass",
          rule="vcpu->mutex of plane 0 is taken outside vcpu->mutex of the same id in another "
               "plane (annotated as a nesting subclass)",
          invariant="through KVM_RUN switching into plane 1 and a plane-1 vCPU ioctl: plane 0 "
                    "always first, the second behind its subclass; the run conforms to the "
                    "model's document",
          catches=("plane_mutex_unannotated", "plane_ioctl_locks_own_first"), **_BOUND)
def vcpu_mutex_planes_correct() -> None:
    _run(_planes, Hazards())
    check_graph()


@scenario("order.vcpu_mutex_planes.broken", variant="broken", expect="lockdep",
          lockdep_kind="recursive",
          rule="two planes' vcpu->mutex nested without the subclass annotation",
          invariant="the same paths with mutant plane_mutex_unannotated: lockdep reports "
                    "possible recursive locking of vcpu->mutex", **_BOUND)
def vcpu_mutex_planes_unannotated() -> None:
    _run(_planes, hazards_of({"plane_mutex_unannotated": True}))


@scenario("order.vcpu_mutex_planes.inverted", variant="broken", expect="deadlock",
          rule="a plane-1 ioctl locks its own vcpu->mutex, then plane 0's behind the same "
               "annotation: lockdep sees one consistent order of classes, the explorer sees "
               "the deadlock",
          invariant="the same paths with mutant plane_ioctl_locks_own_first: all tasks "
                    "blocked, an annotation cannot make an inversion safe", **_BOUND)
def vcpu_mutex_planes_inverted() -> None:
    _run(_planes, hazards_of({"plane_ioctl_locks_own_first": True}))


# ---------------------------------------------------------------------- everything else is a leaf

@scenario("order.leaves.correct", variant="correct", expect="pass",
          rule="everything else is a leaf: nothing is taken inside the other locks",
          invariant="no dependency leaves a leaf lock; no dependency inverts a documented order",
          catches=("xen_lock_locks_vcpus", "tsc_write_walks_vm_list", "pi_list_irqs_on",
                   "gtod_notifier_takes_kvm_lock", "tsc_write_lock_mutex",
                   "set_clock_hv_request_under_tsc_lock"), max_runs=1000)
def leaves_correct() -> None:
    m = Machine(2)
    vm = m.create_vm(nr_vcpus=2, nr_pages=2, host_pages=2)
    vm.set_memory_region(0, base_gfn=0, npages=1, hva=0)
    vm.host.fault_in(0)
    tsc = TscSync(vm)
    hv, xen = HyperV(vm), Xen(vm)
    pv = PostedVcpu(m, vm.vcpus[1], cpu=1)
    clock = KvmClock(m)
    # a wakeup-vector interrupt with nobody blocked yet takes wakeup_vcpus_on_cpu_lock, which
    # the blocking vCPU below skips when the interrupt is already pending
    send_wakeup_vector(m, 1)

    def vcpu0() -> None:
        vcpu = vm.vcpus[0]
        with vcpu.mutex:
            tsc.write(vcpu, 0, 1000)
            hv.set_msr(vcpu, "HV_X64_MSR_GUEST_OS_ID", 7)
            xen.vcpu_set_attr(vcpu, "runstate", 1)
        vm.host.swap_out(0)  # the MMU notifier: mn_invalidate_lock

    def host() -> None:
        xen.hvm_set_attr("upcall_vector", 3)
        post_interrupt(pv, 5)
        ioctls.create_pit(vm)  # irq_lock inside slots_lock
        m.hyperv_tsc_notifier()  # tsc_write_lock inside kvm_lock
        tsc.set_clock(9_000, 2_000, hv=hv)  # KVM_SET_CLOCK: hv_lock, then tsc_write_lock
        clock.tick()  # tk_core.lock, in the timer tick

    together(vcpu0, host, pv.block, names=["vcpu0", "host", "vcpu1"])
    assert pv.delivered == {5}, f"posted vector lost: delivered {pv.delivered}"
    tsc.check()
    doc = model_spec()
    # the MMU's sub-locks ("only with mmu_lock held") are taken by order.mmu_lock.* instead
    mmu_only = {r.inner for r in doc.rules if r.kind == "requires"}
    leaves = [r.outer for r in doc.rules if r.kind == "leaf" and r.outer not in mmu_only]
    check_graph()
    conf = spec_check(doc, lockdep.graph())
    idle = [r.rule.outer for r in conf.results
            if r.rule.kind == "leaf" and r.rule.outer in leaves and r.status != HELD]
    assert leaves and not idle, f"leaf locks no path took: {idle}"


@scenario("order.leaves.hv_lock_nests.broken", variant="broken", expect="assertion",
          rule="a leaf lock with another lock taken inside it: the reference-TSC MSR write "
               "rewrites the TSC page under hv_lock (tsc_write_lock inside it)",
          invariant="through two vCPUs' Hyper-V MSR writes and KVM_HYPERV_EVENTFD with mutant "
                    "hv_ref_tsc_update_under_hv_lock: check_graph finds the edge leaving "
                    "kvm->arch.hyperv.hv_lock", max_runs=50)
def leaves_hv_lock_nests_broken() -> None:
    _run(lambda h: _vcpus_msr(h, xen=False), hazards_of({"hv_ref_tsc_update_under_hv_lock"}))
    check_graph()


@scenario("order.leaves.tsc_write_lock_sleeps.broken", variant="broken", expect="lockdep",
          lockdep_kind="sleep_in_atomic",
          rule="a sleeping lock taken inside the raw tsc_write_lock: KVM_SET_CLOCK asks Hyper-V "
               "for a TSC page rewrite (hv_lock, a mutex) inside the pvclock update",
          invariant="through KVM_SET_CLOCK with mutant set_clock_hv_request_under_tsc_lock: "
                    "lockdep reports the mutex acquired with interrupts off under a raw "
                    "spinlock", max_runs=50)
def leaves_tsc_write_lock_sleeps_broken() -> None:
    vm = VM(None, nr_vcpus=1, hazards={"set_clock_hv_request_under_tsc_lock"})
    hv = HyperV(vm)
    with vm.vcpus[0].mutex:
        hv.set_msr(vm.vcpus[0], "HV_X64_MSR_REFERENCE_TSC", 1)
    together(lambda: TscSync(vm).set_clock(9_000, 2_000, hv=hv), names=["KVM_SET_CLOCK"])
