"""Data the Reference says a lock protects, changed by racing ioctls with that lock held.

Each scenario runs the model's own paths that write one declared datum (``guarded_by`` in the
model) from two tasks at once. The correct model holds the lock at every access, so lockdep
stays silent and the result is one of the writes; the mutant that leaves the lock out of one
path is reported at the first unguarded access (kind ``unguarded``), whatever the schedule.

``protected.irqchip_publish`` is the other side of one such datum: ``kvm->lock`` serialises
KVM_CREATE_IRQCHIP, but the paths that only *test* ``irqchip_in_kernel()`` take no lock, so what
they may rely on is decided by the order in which the ioctl publishes its parts.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmlock.kvm import ioctls
from kvmlock.kvm.hyperv import HyperV
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.tsc import TscSync
from kvmlock.kvm.vm import VM
from kvmlock.kvm.xen import Xen
from kvmlock.scenarios.orders import together, try_gsi_routing
from kvmlock.scenarios.registry import pair, scenario
from kvmlock.sync import peek

__all__: list[str] = []

_BOUND = {"strategy": "dpor", "max_runs": 20000}


def _race(**tasks: Callable[[], object]) -> list[object]:
    return together(*tasks.values(), names=tasks)


@scenario("protected.hyperv_partition.correct",
          rule="kvm->arch.hyperv.hv_lock protects the partition-wide Hyper-V MSRs and the "
               "eventfd bindings: two vCPUs' WRMSRs (vcpu1 reading the MSR back) and "
               "KVM_HYPERV_EVENTFD",
          variant="correct", expect="pass",
          invariant="the guest OS id is one of the values written, and vcpu1 reads one of "
                    "them; the eventfd is bound",
          catches=("hv_msr_without_hv_lock", "hv_msr_read_without_hv_lock",
                   "hv_eventfd_without_hv_lock"), **_BOUND)
def hyperv_partition_correct() -> None:
    vm = VM(None, nr_vcpus=2)
    hv = HyperV(vm)

    read: list[int] = []

    def wrmsr(i: int) -> Callable[[], None]:
        def run() -> None:
            with vm.vcpus[i].mutex:
                hv.set_msr(vm.vcpus[i], "HV_X64_MSR_GUEST_OS_ID", i + 1)
            if i:
                with vm.vcpus[i].mutex:  # a later RDMSR exit, while vcpu0 may be writing
                    read.append(hv.get_msr(vm.vcpus[i], "HV_X64_MSR_GUEST_OS_ID"))
        return run

    _race(vcpu0_wrmsr=wrmsr(0), vcpu1_wrmsr=wrmsr(1),
          KVM_HYPERV_EVENTFD=lambda: hv.eventfd_assign(7))
    assert read and read[0] in (1, 2)
    assert peek(hv, "partition")["HV_X64_MSR_GUEST_OS_ID"] in (1, 2)
    assert peek(hv, "eventfds") == {7}


@scenario("protected.xen_state.correct",
          rule="kvm->arch.xen.xen_lock protects the VM-wide Xen state: a VM ioctl and a vCPU "
               "ioctl set attributes at once",
          variant="correct", expect="pass",
          invariant="both attributes are set",
          catches=("xen_attr_without_xen_lock", "xen_vcpu_attr_without_xen_lock"), **_BOUND)
def xen_state_correct() -> None:
    vm = VM(None, nr_vcpus=1)
    xen = Xen(vm)
    v0 = vm.vcpus[0]

    def vcpu0() -> None:
        with v0.mutex:
            xen.vcpu_set_attr(v0, "runstate", 1)

    _race(vcpu0_set_attr=vcpu0, KVM_XEN_HVM_SET_ATTR=lambda: xen.hvm_set_attr("upcall_vector", 3))
    assert peek(xen, "attrs") == {"upcall_vector": 3}
    assert peek(xen, "vcpu_attrs") == {(0, "runstate"): 1}


@scenario("protected.irq_routing.correct",
          rule="kvm->irq_lock protects the interrupt routing and the ack notifiers: two "
               "KVM_SET_GSI_ROUTING calls and KVM_CREATE_PIT2",
          variant="correct", expect="pass",
          invariant="the routing table is one of the two written; the PIT's ack notifier is "
                    "registered",
          catches=("routing_without_irq_lock", "ack_notifier_without_irq_lock"), **_BOUND)
def irq_routing_correct() -> None:
    vm = VM(None, nr_vcpus=1)
    ioctls.create_irqchip(vm)
    _race(routes_ioapic=lambda: ioctls.set_gsi_routing(vm, ("ioapic",)),
          routes_pic=lambda: ioctls.set_gsi_routing(vm, ("pic",)),
          KVM_CREATE_PIT2=lambda: ioctls.create_pit(vm))
    assert peek(vm, "irq_routing") in (("ioapic",), ("pic",))
    assert peek(vm, "irq_ack_notifiers") == ["pit"]


def _try_create_pit(vm: VM) -> bool:
    try:
        ioctls.create_pit(vm)
    except ValueError:
        return False  # EEXIST: the other creator made it
    return True


@scenario("protected.pit_creation.correct",
          rule="kvm->lock serialises KVM_CREATE_PIT2: two creators race",
          variant="correct", expect="pass",
          invariant="one creator makes the PIT and the other gets EEXIST: one PIT device, one "
                    "ack notifier",
          catches=("pit_without_kvm_lock",), **_BOUND)
def pit_creation_correct() -> None:
    vm = VM(None, nr_vcpus=1)
    ioctls.create_irqchip(vm)
    made = _race(KVM_CREATE_PIT2_a=lambda: _try_create_pit(vm),
                 KVM_CREATE_PIT2_b=lambda: _try_create_pit(vm))
    assert sorted(made) == [False, True], f"two KVM_CREATE_PIT2 returned {made}"
    assert ioctls.bus_devices(vm).count("pit") == 1
    assert peek(vm, "irq_ack_notifiers") == ["pit"]


@scenario("protected.irqchip_publish.correct",
          rule="KVM_CREATE_IRQCHIP sets irqchip_mode last (kvm->lock held): KVM_SET_GSI_ROUTING "
               "and KVM_IRQ_LINE, which test it without kvm->lock, race it",
          variant="correct", expect="pass",
          invariant="a path that finds irqchip_in_kernel() true finds the routing table and the "
                    "PIC/IOAPIC on the bus; routes KVM_SET_GSI_ROUTING installs are final",
          catches=("irqchip_mode_before_devices", "gsi_routing_without_irqchip"), **_BOUND)
def irqchip_publish_correct() -> None:
    irqchip_publish()


def irqchip_publish(*, routing: bool = True, line: bool = True) -> None:
    """KVM_CREATE_IRQCHIP racing KVM_SET_GSI_ROUTING (``routing``) and KVM_IRQ_LINE
    (``line``), then the checks; ``irq_line`` asserts its own part where it runs."""
    vm = VM(None, nr_vcpus=0)  # x86 refuses KVM_CREATE_IRQCHIP once a vCPU exists
    routed: list[bool] = []

    def irq_line() -> None:
        try:
            ioctls.irq_line(vm, 1)
        except ValueError:
            pass  # ENXIO: no irqchip yet

    tasks: dict[str, Callable[[], object]] = {
        "KVM_CREATE_IRQCHIP": lambda: ioctls.create_irqchip(vm)}
    if routing:
        tasks["KVM_SET_GSI_ROUTING"] = lambda: routed.append(try_gsi_routing(vm, ("ioapic",)))
    if line:
        tasks["KVM_IRQ_LINE"] = irq_line
    _race(**tasks)
    ours = bool(routed and routed[0])
    want = ("ioapic",) if ours else ("pic", "ioapic")
    got = peek(vm, "irq_routing")
    why = ": the defaults replaced the routes KVM_SET_GSI_ROUTING set" if ours else ""
    assert got == want, f"the routing table is {got}, not {want}{why}"
    assert {"pic", "ioapic"} <= set(ioctls.bus_devices(vm))


@scenario("protected.vcpu_state.correct",
          rule="vcpu->mutex protects one vCPU's state: a VM ioctl that locks every vCPU races "
               "a vCPU ioctl",
          variant="correct", expect="pass",
          invariant="every vCPU got the VM-wide setting, and vcpu0 its own",
          catches=("vcpu_ioctl_without_vcpu_mutex",), **_BOUND)
def vcpu_state_correct() -> None:
    vm = VM(None, nr_vcpus=2)
    _race(vm_ioctl=lambda: ioctls.set_vcpus_config(vm, "tsc_khz", 1),
          vcpu0_ioctl=lambda: ioctls.vcpu_set_config(vm.vcpus[0], "cpuid", 2))
    ioctls.check_vcpus_config(vm, "tsc_khz")
    assert peek(vm.vcpus[0], "config")["cpuid"] == 2


@scenario("protected.reference_tsc_page.correct",
          rule="kvm->arch.tsc_write_lock protects the reference TSC page: the Hyper-V clock "
               "notifier rewrites it while a vCPU's TSC write takes the same lock",
          variant="correct", expect="pass",
          invariant="the notifier rewrote the VM's page once; vCPUs of one TSC generation "
                    "share one offset",
          catches=("hv_tsc_page_without_tsc_write_lock",), **_BOUND)
def reference_tsc_page_correct() -> None:
    m = Machine(2)
    vm = m.create_vm(nr_vcpus=1)
    tsc = TscSync(vm)
    v0 = vm.vcpus[0]

    def set_tsc() -> None:
        with v0.mutex:
            tsc.write(v0, 0, 1000)

    _race(hyperv_clock_notifier=m.hyperv_tsc_notifier, vcpu0_KVM_SET_TSC=set_tsc)
    assert peek(vm, "hv_tsc_page_updates") == 1
    tsc.check()


@scenario("protected.vcpu_creation.correct",
          rule="kvm->lock protects vCPU creation: two KVM_CREATE_VCPU calls at once",
          variant="correct", expect="pass",
          invariant="each new vCPU got its own id, and the VM counts both",
          catches=("create_vcpu_without_kvm_lock", "vcpu_published_after_unlock"), **_BOUND)
def vcpu_creation_correct() -> None:
    vm = VM(None, nr_vcpus=1)
    _race(create_vcpu_a=vm.create_vcpu, create_vcpu_b=vm.create_vcpu)
    assert sorted(v.id for v in vm.vcpus) == [0, 1, 2]
    assert peek(vm, "created_vcpus") == 3


@pair("protected.vm_default_vs_create",
      rule="a VM-wide vCPU ioctl updates the setting new vCPUs start with under kvm->lock, "
           "which KVM_CREATE_VCPU holds while it copies it and publishes the vCPU",
      broken_rule="the VM-wide setting updated after kvm->lock is dropped: a vCPU created in "
                  "between is not in the array the ioctl walked and copies the old setting",
      broken_expect="assertion", catches=("vcpu_default_after_unlock",),
      invariant="every vCPU, the new one too, has the VM-wide setting (the consequence itself: "
                "lockdep's report of the unguarded write is set aside in both rows)",
      lockdep=False, **_BOUND)
def vm_default_vs_create(broken: bool) -> None:
    vm = VM(None, nr_vcpus=1, hazards={"vcpu_default_after_unlock": broken})
    _race(vm_ioctl=lambda: ioctls.set_vcpus_config(vm, "tsc_khz", 1),
          create_vcpu=vm.create_vcpu)
    assert len(vm.vcpus) == 2
    ioctls.check_vcpus_config(vm, "tsc_khz")


@scenario("protected.vm_config_vs_create.correct",
          rule="kvm->lock protects the VM-wide vCPU configuration: a VM ioctl that sets every "
               "vCPU races KVM_CREATE_VCPU, which publishes the new vCPU under kvm->lock",
          variant="correct", expect="pass",
          invariant="every vCPU, the new one too, has the VM-wide setting",
          catches=("vm_ioctl_reads_vcpus_unlocked", "vcpu_published_after_unlock"), **_BOUND)
def vm_config_vs_create() -> None:
    vm = VM(None, nr_vcpus=1)
    _race(vm_ioctl=lambda: ioctls.set_vcpus_config(vm, "tsc_khz", 1),
          create_vcpu=vm.create_vcpu)
    assert len(vm.vcpus) == 2
    ioctls.check_vcpus_config(vm, "tsc_khz")
