"""The I/O buses (``kvm->buses``): where a vCPU's MMIO write finds the in-kernel device.

Like the memslots array, a bus is an immutable array published through an SRCU-protected
pointer (facts from kvm_main.c): a vCPU looks the device up inside the ``kvm->srcu`` read side
(``srcu_dereference``) and may keep using the bus it saw; registering or unregistering a device
(an ioeventfd, say) happens with ``kvm->slots_lock`` held, reads the current bus on that update
side (``srcu_dereference_check`` with ``slots_lock`` held), publishes a copy with the change and
waits for a grace period before the old bus -- and an unregistered device -- may be freed.

The invariant: a device is only written while it is registered or within the grace period
that its unregistration waits for; after ``unregister`` returns, nobody writes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock import lockdep, runtime
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["Doorbell", "IoBus", "io_bus_register_dev", "io_bus_unregister_dev", "mmio_write"]

MMIO_WITHOUT_SRCU = mutant(
    "mmio_without_srcu", removes="the kvm->srcu read side around a vCPU's MMIO bus lookup",
    breaks="kvm->srcu protects kvm->buses: a bus is freed only after its readers left")


class Doorbell:
    """An in-kernel MMIO device (an ioeventfd): counts the writes it receives."""

    def __init__(self, addr: int, name: str = "doorbell") -> None:
        if not isinstance(addr, int) or addr < 0:
            raise ValueError(f"Doorbell: addr must be a non-negative integer, got {addr!r}")
        self.addr = addr
        self.name = name
        self.writes: list[int] = []
        self.freed = False

    def write(self, value: int) -> None:
        runtime.active().point(self, "doorbell write", True)
        assert not self.freed, (f"{self.name} at {self.addr:#x} was written after it was "
                                f"unregistered and freed")
        self.writes.append(value)

    def free(self) -> None:
        runtime.active().point(self, "free device", True)
        self.freed = True

    def __repr__(self) -> str:
        return f"<Doorbell {self.name} @{self.addr:#x}>"


class IoBus:
    """One immutable generation of the MMIO bus: address -> device."""

    __slots__ = ("devs",)

    def __init__(self, devs: tuple[Doorbell, ...] = ()) -> None:
        self.devs = devs

    def find(self, addr: int) -> Doorbell | None:
        for d in self.devs:
            if d.addr == addr:
                return d
        return None

    def __repr__(self) -> str:
        return f"<IoBus {[hex(d.addr) for d in self.devs]}>"


def _get_bus(vm: VM) -> IoBus:
    """``kvm_get_bus``: the current bus, read on the update side (``slots_lock`` held)."""
    return vm.buses.srcu_dereference_check(vm.srcu, lockdep.is_held(vm.slots_lock))


def io_bus_register_dev(vm: VM, dev: Doorbell) -> None:
    """``kvm_io_bus_register_dev``: the caller holds ``kvm->slots_lock``."""
    bus = _get_bus(vm)
    if bus.find(dev.addr) is not None:
        raise ValueError(f"io_bus_register_dev: address {dev.addr:#x} is taken")
    vm.buses.assign(IoBus((*bus.devs, dev)))
    vm.srcu.synchronize()  # synchronize_srcu_expedited: the old bus is freed after it


def io_bus_unregister_dev(vm: VM, dev: Doorbell) -> None:
    """``kvm_io_bus_unregister_dev``: the caller holds ``kvm->slots_lock``; once the grace
    period is over, the device is freed."""
    bus = _get_bus(vm)
    if dev not in bus.devs:
        raise ValueError(f"io_bus_unregister_dev: {dev!r} is not registered")
    vm.buses.assign(IoBus(tuple(d for d in bus.devs if d is not dev)))
    vm.srcu.synchronize()
    dev.free()


def mmio_write(vcpu: VCPU, addr: int, value: int) -> bool:
    """A guest MMIO write that exits to KVM (``kvm_io_bus_write``), made inside the vCPU's
    ``kvm->srcu`` read side; False when no in-kernel device claims it (an exit to user space).
    """
    vm = vcpu.vm
    if MMIO_WITHOUT_SRCU in vm.hazards:
        return _bus_write(vm, addr, value)
    idx = vm.srcu.read_lock()
    try:
        return _bus_write(vm, addr, value)
    finally:
        vm.srcu.read_unlock(idx)


def _bus_write(vm: VM, addr: int, value: int) -> bool:
    dev = vm.buses.srcu_dereference(vm.srcu).find(addr)
    if dev is None:
        return False
    dev.write(value)
    return True
