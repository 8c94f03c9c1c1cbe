"""VM and vCPU ioctls whose lock nesting is part of KVM's design (facts from kvm_main.c, x86.c).

Each function is one kernel path, reduced to its locks and the shared state they guard:

* :func:`set_vcpus_config` -- a VM ioctl that changes every vCPU's state while none of them
  runs: ``kvm->lock``, then each ``vcpu->mutex`` (``kvm_lock_all_vcpus``; SEV intra-host
  migration and arm64's counter offset do this). ``kvm->lock`` is outside ``vcpu->mutex``.
* :func:`vcpu_set_config` -- a vCPU ioctl: ``vcpu->mutex`` only.
* :func:`create_irqchip` -- ``KVM_CREATE_IRQCHIP``: under ``kvm->lock`` it registers the PIC and
  IOAPIC on the I/O bus (``kvm->slots_lock``; :mod:`kvmlock.kvm.iobus` publishes the new bus
  and waits for ``synchronize_srcu``) and installs the default routes (``kvm->irq_lock``). So
  ``synchronize_srcu`` runs under ``kvm->lock`` and ``kvm->slots_lock``.
  ``irqchip_in_kernel()`` becomes true last (``smp_wmb``): paths that test it without
  ``kvm->lock`` rely on finding the devices and the routes once it is true.
* :func:`set_gsi_routing` (``kvm->irq_lock``) and :func:`assign_ioeventfd` (``kvm->slots_lock``)
  -- the same updates made directly by userspace, without ``kvm->lock``.
* :func:`irq_line` -- ``KVM_IRQ_LINE``: userspace raises an interrupt line; refused until
  ``irqchip_in_kernel()``, then delivered through the routing table to the PIC or IOAPIC.
* :func:`create_pit` -- the PIT: its I/O device is registered under ``kvm->slots_lock`` and,
  still under it, its interrupt ack notifier under ``kvm->irq_lock`` -- the uncommon path that
  holds both.
* :func:`set_msr_filter` -- ``KVM_X86_SET_MSR_FILTER``: publishes a new filter and frees the
  old one after ``synchronize_srcu``, all under ``kvm->lock``. vCPUs read the filter inside
  ``kvm->srcu`` (:func:`msr_exit`), so ``kvm->lock`` must never be taken inside the read side.
* :func:`inhibit_apic_access_page` -- during KVM_RUN (``vcpu->mutex`` held, inside the vCPU's
  ``kvm->srcu`` read side) the APIC-access memslot is deleted once APICv is inhibited. A memslot
  update synchronizes SRCU, so the vCPU leaves its read side first and re-enters it after:
  ``synchronize_srcu`` under ``vcpu->mutex``, never inside the read side.

Each weakened form is a mutant (:mod:`kvmlock.kvm.mutants`) declared and read right here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmlock import lockdep, runtime
from kvmlock.kvm.iobus import Doorbell, io_bus_register_dev, io_bus_unregister_dev
from kvmlock.kvm.memslots import MsrFilter, active_memslots, retire
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import peek

if TYPE_CHECKING:
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["APIC_ACCESS_SLOT", "assign_ioeventfd", "check_vcpus_config", "create_irqchip",
           "create_pit", "inhibit_apic_access_page", "bus_devices", "irq_line", "kvm_run",
           "msr_exit",
           "set_gsi_routing", "set_msr_filter", "set_vcpus_config", "vcpu_set_config"]

VCPU_IOCTL_TAKES_KVM_LOCK = mutant(
    "vcpu_ioctl_takes_kvm_lock",
    removes="(adds) kvm->lock taken inside vcpu->mutex by a vCPU ioctl",
    breaks="kvm->lock is taken outside vcpu->mutex")
ROUTING_TAKES_KVM_LOCK = mutant(
    "routing_takes_kvm_lock",
    removes="(adds) kvm->lock taken under irq_lock by KVM_SET_GSI_ROUTING",
    breaks="kvm->lock is taken outside kvm->irq_lock")
IOEVENTFD_TAKES_KVM_LOCK = mutant(
    "ioeventfd_takes_kvm_lock", removes="(adds) kvm->lock taken under slots_lock by KVM_IOEVENTFD",
    breaks="kvm->lock is taken outside kvm->slots_lock")
PIT_SLOTS_LOCK_INSIDE_IRQ_LOCK = mutant(
    "pit_slots_lock_inside_irq_lock",
    removes="(adds) slots_lock taken under irq_lock when the PIT registers its device",
    breaks="kvm->slots_lock is taken outside kvm->irq_lock")
BUS_UPDATE_WITHOUT_SLOTS_LOCK = mutant(
    "bus_update_without_slots_lock", removes="kvm->slots_lock around registering devices on "
    "the I/O bus (KVM_IOEVENTFD assign and deassign, KVM_CREATE_IRQCHIP)",
    breaks="kvm->slots_lock protects kvm->buses updates")
MSR_EXIT_WITHOUT_SRCU = mutant(
    "msr_exit_without_srcu", removes="the kvm->srcu read side around an MSR exit's filter lookup",
    breaks="kvm->srcu protects kvm->arch.msr_filter: a filter is freed only after its readers "
           "left")
MSR_FILTER_WITHOUT_KVM_LOCK = mutant(
    "msr_filter_update_without_kvm_lock", removes="kvm->lock around KVM_X86_SET_MSR_FILTER's "
    "publication of a new filter", breaks="kvm->lock protects kvm->arch.msr_filter updates")
GSI_ROUTING_WITHOUT_IRQCHIP = mutant(
    "gsi_routing_without_irqchip", removes="KVM_SET_GSI_ROUTING's refusal before the VM has "
    "an in-kernel irqchip (kvm_arch_can_set_irq_routing)",
    breaks="routes userspace sets are final: accepted before KVM_CREATE_IRQCHIP, they would be "
           "replaced by its default routes (and could name devices that do not exist yet)")
ROUTING_WITHOUT_IRQ_LOCK = mutant(
    "routing_without_irq_lock", removes="kvm->irq_lock around replacing the interrupt routing "
    "table", breaks="kvm->irq_lock protects the interrupt routing")
ACK_NOTIFIER_WITHOUT_IRQ_LOCK = mutant(
    "ack_notifier_without_irq_lock", removes="kvm->irq_lock around registering the PIT's ack "
    "notifier", breaks="kvm->irq_lock protects the irqchip's ack notifiers")
IRQCHIP_MODE_BEFORE_DEVICES = mutant(
    "irqchip_mode_before_devices", removes="KVM_CREATE_IRQCHIP setting irqchip_mode last (after "
    "the PIC, the IOAPIC and the default routes, behind smp_wmb): it is set first",
    breaks="a path that finds irqchip_in_kernel() true without kvm->lock finds the routing "
           "table and the PIC/IOAPIC, and routes it installs are not replaced by the defaults")
IRQCHIP_EEXIST_CHECK_UNLOCKED = mutant(
    "irqchip_eexist_check_unlocked", removes="KVM_CREATE_IRQCHIP testing irqchip_in_kernel() "
    "(EEXIST) under kvm->lock: it is tested before the lock is taken",
    breaks="kvm->lock serialises KVM_CREATE_IRQCHIP: the check that no irqchip exists and its "
           "creation are one step, so a second creator gets EEXIST, not a second PIC")
VM_IOCTL_READS_VCPUS_UNLOCKED = mutant(
    "vm_ioctl_reads_vcpus_unlocked", removes="kvm->lock around a VM-wide vCPU ioctl's read "
    "of the vCPU array (read before the lock is taken)",
    breaks="kvm->lock protects the VM-wide configuration VM ioctls change: a vCPU created "
           "meanwhile is either in the array the ioctl walks or starts with its setting")
VCPU_DEFAULT_AFTER_UNLOCK = mutant(
    "vcpu_default_after_unlock", removes="kvm->lock around a VM-wide vCPU ioctl's update of "
    "the setting new vCPUs start with (updated after the lock is dropped)",
    breaks="kvm->lock protects the VM-wide configuration VM ioctls change: KVM_CREATE_VCPU "
           "copies it under the lock, so a vCPU created meanwhile is either in the array the "
           "ioctl walks or starts with its setting")
PIT_WITHOUT_KVM_LOCK = mutant(
    "pit_without_kvm_lock", removes="kvm->lock around KVM_CREATE_PIT2 (its EEXIST check and "
    "the PIT's creation)",
    breaks="kvm->lock serialises KVM_CREATE_PIT2: the check that no PIT exists and its "
           "creation are one step, so a second creator gets EEXIST, not a second PIT")
DEASSIGN_LOOKUP_APART = mutant(
    "deassign_lookup_apart", removes="KVM_IOEVENTFD deassign finding the ioeventfd and "
    "unregistering it in one kvm->slots_lock section (the lock dropped and taken again between)",
    breaks="kvm->slots_lock protects the ioeventfds and kvm->buses: two deassigns of one "
           "ioeventfd cannot both find it, so it is unregistered and freed once")
VCPU_IOCTL_WITHOUT_VCPU_MUTEX = mutant(
    "vcpu_ioctl_without_vcpu_mutex", removes="vcpu->mutex around a vCPU ioctl's change to the "
    "vCPU's state", breaks="vcpu->mutex protects one vCPU's state against concurrent ioctls")
APIC_ACCESS_DELETE_UNDER_SRCU = mutant(
    "apic_access_delete_under_srcu",
    removes="leaving the kvm->srcu read side before KVM_RUN deletes the APIC-access memslot",
    breaks="synchronize_srcu(&kvm->srcu) is never called inside its own read side")

MSR_EXIT_TAKES_KVM_LOCK = mutant(
    "msr_exit_takes_kvm_lock", removes="(adds) the MSR exit reads the filter under kvm->lock, "
    "inside its kvm->srcu read side",
    breaks="kvm->lock is never taken inside a kvm->srcu read side: synchronize_srcu runs "
           "under it")
RUN_SRCU_BEFORE_VCPU_MUTEX = mutant(
    "run_srcu_before_vcpu_mutex", removes="(adds) KVM_RUN enters kvm->srcu's read side before "
    "it locks vcpu->mutex",
    breaks="vcpu->mutex is never taken inside a kvm->srcu read side: synchronize_srcu runs "
           "under it")

#: the memslot id KVM reserves for the APIC-access page (a private slot in the kernel)
APIC_ACCESS_SLOT = 509


# ----------------------------------------------------------------------------- vCPU state


def set_vcpus_config(vm: VM, key: str, value: int) -> None:
    """A VM ioctl that sets ``key`` on every vCPU while none runs (``kvm_lock_all_vcpus``),
    and as the VM-wide setting a vCPU created later starts with.

    The vCPU array is read under ``kvm->lock``, which KVM_CREATE_VCPU holds to publish: every
    vCPU is either in the array read here or created after this ioctl, with the new setting.
    """
    rt = runtime.active()
    early = VM_IOCTL_READS_VCPUS_UNLOCKED in vm.hazards
    late = VCPU_DEFAULT_AFTER_UNLOCK in vm.hazards
    if early:
        rt.point(vm.vcpus, "read vcpu_array", False)
        vcpus = list(vm.vcpus)  # broken: a vCPU created before the lock is taken is missed
    with vm.lock:
        if not early:
            rt.point(vm.vcpus, "read vcpu_array", False)
            vcpus = list(vm.vcpus)
        if not late:
            vm.vcpu_defaults = {**vm.vcpu_defaults, key: value}
        for vcpu in vcpus:
            vcpu.mutex.lock_nest(vm.lock)
        try:
            for vcpu in vcpus:
                vcpu.config[key] = value
        finally:
            for vcpu in reversed(vcpus):
                vcpu.mutex.unlock()
    if late:  # broken: a vCPU created since the unlock copied the old setting
        vm.vcpu_defaults = {**vm.vcpu_defaults, key: value}


def vcpu_set_config(vcpu: VCPU, key: str, value: int) -> None:
    """A vCPU ioctl setting ``key`` on one vCPU (``vcpu->mutex`` held for the ioctl)."""
    vm = vcpu.vm
    with unless(VCPU_IOCTL_WITHOUT_VCPU_MUTEX, vm.hazards, vcpu.mutex):
        if vm.hazards.vcpu_ioctl_takes_kvm_lock:
            with vm.lock:  # broken: kvm->lock is ordered outside vcpu->mutex
                vcpu.config[key] = value
        else:
            vcpu.config[key] = value


def check_vcpus_config(vm: VM, key: str) -> None:
    """Invariant after a VM-wide change raced vCPU ioctls: no vCPU lacks the key."""
    missing = [v.id for v in vm.vcpus if key not in peek(v, "config")]
    assert not missing, f"vCPU(s) {missing} never got {key!r}"


# ----------------------------------------------------------------------------- irqchip


#: where the model's in-kernel devices sit on the I/O bus
PIC, IOAPIC, PIT = 0x20, 0xFEC00000, 0x40


def _io_bus_register(vm: VM, addr: int, name: str) -> None:
    """Register an in-kernel device (``kvm_io_bus_register_dev``; slots_lock held)."""
    vm.slots_lock.assert_held()
    io_bus_register_dev(vm, Doorbell(addr, name))


def _set_irq_routing(vm: VM, routes: tuple[str, ...], *, from_ioctl: bool = False) -> None:
    """``kvm_set_irq_routing``: swap the routing table under ``kvm->irq_lock``."""
    with unless(ROUTING_WITHOUT_IRQ_LOCK, vm.hazards, vm.irq_lock):
        if from_ioctl and vm.hazards.routing_takes_kvm_lock:
            with vm.lock:  # broken: kvm->lock is ordered outside kvm->irq_lock
                pass
        vm.irq_routing = routes


def set_gsi_routing(vm: VM, routes: tuple[str, ...]) -> None:
    """``KVM_SET_GSI_ROUTING``: userspace replaces the routes (``kvm->irq_lock`` only); refused
    with ``EINVAL`` (a ValueError) before the VM has an in-kernel irqchip."""
    if not vm.irqchip.load() and GSI_ROUTING_WITHOUT_IRQCHIP not in vm.hazards:
        raise ValueError("KVM_SET_GSI_ROUTING: the VM has no in-kernel irqchip (EINVAL)")
    _set_irq_routing(vm, tuple(routes), from_ioctl=True)


def assign_ioeventfd(vm: VM, addr: int, name: str = "ioeventfd") -> None:
    """``KVM_IOEVENTFD``: an eventfd device on the I/O bus (``kvm->slots_lock`` only)."""
    with unless(BUS_UPDATE_WITHOUT_SLOTS_LOCK, vm.hazards, vm.slots_lock):
        if vm.hazards.ioeventfd_takes_kvm_lock:
            with vm.lock:  # broken: kvm->lock is ordered outside kvm->slots_lock
                pass
        _io_bus_register(vm, addr, name)


def deassign_ioeventfd(vm: VM, addr: int) -> None:
    """``KVM_IOEVENTFD`` with ``KVM_IOEVENTFD_FLAG_DEASSIGN``: the device leaves the bus and is
    freed after a grace period (``kvm->slots_lock`` held throughout)."""
    with unless(BUS_UPDATE_WITHOUT_SLOTS_LOCK, vm.hazards, vm.slots_lock):
        bus = vm.buses.srcu_dereference_check(vm.srcu, lockdep.is_held(vm.slots_lock))
        dev = bus.find(addr)
        if dev is None:
            raise ValueError(f"KVM_IOEVENTFD deassign: nothing at {addr:#x} (ENOENT)")
        if DEASSIGN_LOOKUP_APART in vm.hazards:  # broken: another deassign may find it too
            vm.slots_lock.unlock()
            vm.slots_lock.lock()
        io_bus_unregister_dev(vm, dev)
        dev.free()  # ioeventfd_release: the grace period the unregistration waited is over


def create_irqchip(vm: VM) -> None:
    """``KVM_CREATE_IRQCHIP``: PIC and IOAPIC on the I/O bus, then the default routes."""
    unlocked_check = IRQCHIP_EEXIST_CHECK_UNLOCKED in vm.hazards
    if unlocked_check and vm.irqchip.load():  # broken: another creator may be past it too
        raise ValueError("KVM_CREATE_IRQCHIP: the VM already has an irqchip (EEXIST)")
    with vm.lock:
        if not unlocked_check and vm.irqchip.load():
            raise ValueError("KVM_CREATE_IRQCHIP: the VM already has an irqchip (EEXIST)")
        early = IRQCHIP_MODE_BEFORE_DEVICES in vm.hazards
        if early:
            vm.irqchip.store(1)  # broken: unlocked readers may see it before what it stands for
        with unless(BUS_UPDATE_WITHOUT_SLOTS_LOCK, vm.hazards, vm.slots_lock):
            _io_bus_register(vm, PIC, "pic")
            _io_bus_register(vm, IOAPIC, "ioapic")
        _set_irq_routing(vm, ("pic", "ioapic"))
        if not early:
            vm.irqchip.store(1)  # smp_wmb(); irqchip_mode = KVM_IRQCHIP_KERNEL


def irq_line(vm: VM, level: int) -> list[str]:
    """``KVM_IRQ_LINE``: raise the line; returns the devices it reached.

    ``irqchip_in_kernel()`` is tested without ``kvm->lock`` (ENXIO, a ValueError, before
    KVM_CREATE_IRQCHIP). Once it is true the routing table and its devices must exist: an empty
    table loses the interrupt, a route to a device not yet created is the kernel's NULL
    dereference of ``kvm->arch.vpic``. The kernel reads the table inside ``kvm->irq_srcu``; the
    model, which has no ``irq_srcu``, reads it on its update side (``kvm->irq_lock``), which
    answers the same question: is the table written before the mode says it is.
    """
    if not vm.irqchip.load():  # irqchip_in_kernel(): smp_rmb() after reading the mode
        raise ValueError("KVM_IRQ_LINE: the VM has no in-kernel irqchip (ENXIO)")
    with vm.irq_lock:
        routes = vm.irq_routing
    assert routes, ("KVM_IRQ_LINE found irqchip_in_kernel() true but no routing table: the "
                    "interrupt is lost")
    with vm.srcu.read():
        bus = vm.buses.srcu_dereference(vm.srcu)
        for name in routes:
            dev = next((d for d in bus.devs if d.name == name), None)
            assert dev is not None, (f"KVM_IRQ_LINE found irqchip_in_kernel() true and a route "
                                     f"to the {name}, but no {name} exists (NULL dereference)")
            dev.write(level)
    return list(routes)


def create_pit(vm: VM) -> None:
    """``KVM_CREATE_PIT2``: the PIT's I/O device, and its ack notifier registered with it;
    ``EEXIST`` (a ValueError) if the VM has one, checked under the same ``kvm->lock``."""
    with unless(PIT_WITHOUT_KVM_LOCK, vm.hazards, vm.lock):
        if vm.vpit:
            raise ValueError("KVM_CREATE_PIT2: the VM already has a PIT (EEXIST)")
        if vm.hazards.pit_slots_lock_inside_irq_lock:
            with vm.irq_lock, vm.slots_lock:  # broken: slots_lock is outside irq_lock
                pass
        with vm.slots_lock:
            _io_bus_register(vm, PIT, "pit")
            with unless(ACK_NOTIFIER_WITHOUT_IRQ_LOCK, vm.hazards, vm.irq_lock):
                vm.irq_ack_notifiers.append("pit")
        vm.vpit = True


def bus_devices(vm: VM) -> list[str]:
    """The names of the devices on the I/O bus now (for checks after a run)."""
    return [d.name for d in vm.buses.access_pointer().devs]


# ----------------------------------------------------------------------------- MSR filter


def set_msr_filter(vm: VM, denied: frozenset[str]) -> None:
    """``KVM_X86_SET_MSR_FILTER``: publish, wait a grace period, free -- under ``kvm->lock``."""
    with unless(MSR_FILTER_WITHOUT_KVM_LOCK, vm.hazards, vm.lock):
        retire(vm, vm.msr_filter, MsrFilter(frozenset(denied)), vm.lock)


def msr_exit(vcpu: VCPU, msr: str) -> bool:
    """An RDMSR/WRMSR exit: is ``msr`` allowed? Reads the filter inside ``kvm->srcu``."""
    vm = vcpu.vm
    with unless(MSR_EXIT_WITHOUT_SRCU, vm.hazards, vm.srcu.read()):
        if MSR_EXIT_TAKES_KVM_LOCK in vm.hazards:
            with vm.lock:  # broken: kvm->lock inside the read side
                pass
        f: MsrFilter = vm.msr_filter.srcu_dereference(vm.srcu)
        f.live()
        return msr not in f.denied


# ----------------------------------------------------------------------------- KVM_RUN


def kvm_run(vcpu: VCPU, *exits: Callable[[VCPU], object]) -> None:
    """``KVM_RUN``: ``vcpu->mutex`` held, the vCPU inside ``kvm->srcu``'s read side while it
    handles each exit (its index kept in ``vcpu.srcu_idx``, as ``kvm_vcpu_srcu_read_lock``)."""
    vm = vcpu.vm
    early = vm.srcu.read_lock() if RUN_SRCU_BEFORE_VCPU_MUTEX in vm.hazards else None
    with vcpu.mutex:  # broken when ``early``: vcpu->mutex taken inside the read side
        vcpu.srcu_idx = vm.srcu.read_lock() if early is None else early
        try:
            for handle in exits:
                handle(vcpu)
        finally:
            vm.srcu.read_unlock(vcpu.srcu_idx)
            vcpu.srcu_idx = None


# ----------------------------------------------------------------------------- APIC access page


def inhibit_apic_access_page(vcpu: VCPU) -> bool:
    """KVM_RUN, APICv inhibited: delete the APIC-access memslot (False if already gone).

    Called with ``vcpu->mutex`` held and inside the vCPU's ``kvm->srcu`` read side (whose
    index the caller passes through ``vcpu.srcu_idx``); a memslot update synchronizes SRCU, so
    the read side is left around it.
    """
    vm = vcpu.vm
    vcpu.mutex.assert_held()
    if active_memslots(vm).by_id(APIC_ACCESS_SLOT) is None:
        return False
    keep = vm.hazards.apic_access_delete_under_srcu
    if not keep:
        vm.srcu.read_unlock(vcpu.srcu_idx)
    try:
        if vm.memslots.access_pointer().by_id(APIC_ACCESS_SLOT) is None:
            return False  # another vCPU deleted it meanwhile
        try:
            vm.set_memory_region(APIC_ACCESS_SLOT, npages=0)
        except ValueError:
            return False  # deleted by another vCPU between the check and slots_lock
        return True
    finally:
        if not keep:
            vcpu.srcu_idx = vm.srcu.read_lock()
