"""The I/O buses (``kvm->buses``): where a vCPU's MMIO write finds the in-kernel device.

Like the memslots array, a bus is an immutable array published through an SRCU-protected
pointer (facts from kvm_main.c): a vCPU looks the device up inside the ``kvm->srcu`` read side
(``srcu_dereference``) and may keep using the bus it saw; registering or unregistering a device
(an ioeventfd, say) happens with ``kvm->slots_lock`` held, reads the current bus on that update
side (``srcu_dereference_check`` with ``slots_lock`` held), publishes a copy with the change and
waits for a grace period before the old bus -- and an unregistered device -- may be freed.

The invariants: a device is only written while it is registered or within the grace period
that its unregistration waits for; after ``unregister`` returns, nobody writes it. And no
lookup reads a freed bus: every update frees the bus it replaced (``kfree(bus)``) once the
grace period is over, so a registration that skipped the wait frees a bus a vCPU may still be
searching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmlock import lockdep, runtime
from kvmlock.kvm.memslots import Retired
from kvmlock.kvm.mutants import mutant

if TYPE_CHECKING:
    from kvmlock.kvm.vcpu import VCPU
    from kvmlock.kvm.vm import VM

__all__ = ["Doorbell", "IoBus", "io_bus_register_dev", "io_bus_unregister_dev", "mmio_write"]

MMIO_WITHOUT_SRCU = mutant(
    "mmio_without_srcu", removes="the kvm->srcu read side around a vCPU's MMIO bus lookup",
    breaks="kvm->srcu protects kvm->buses: a bus is freed only after its readers left")
BUS_REGISTER_NO_GRACE_PERIOD = mutant(
    "bus_register_no_grace_period", removes="synchronize_srcu_expedited between publishing "
    "the bus with a new device and freeing the old bus (kvm_io_bus_register_dev)",
    breaks="kvm->srcu protects kvm->buses: the bus a registration replaced is freed only "
           "after the readers that may hold it left")


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
        assert not self.freed, f"{self.name} at {self.addr:#x} was freed twice"
        self.freed = True

    def __repr__(self) -> str:
        return f"<Doorbell {self.name} @{self.addr:#x}>"


class IoBus(Retired):
    """One immutable generation of the MMIO bus: address -> device."""

    __slots__ = ("devs",)
    what = "I/O bus"

    def __init__(self, devs: tuple[Doorbell, ...] = ()) -> None:
        super().__init__()
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
    _replace_bus(vm, bus, IoBus((*bus.devs, dev)),
                 wait=BUS_REGISTER_NO_GRACE_PERIOD not in vm.hazards)


def io_bus_unregister_dev(vm: VM, dev: Doorbell) -> None:
    """``kvm_io_bus_unregister_dev``: the caller holds ``kvm->slots_lock``, and frees the
    device once this returns (the grace period is over). A device not on the bus is left
    alone, as the kernel does: the caller's lookup under the same lock is what says it is."""
    bus = _get_bus(vm)
    if dev not in bus.devs:
        return
    _replace_bus(vm, bus, IoBus(tuple(d for d in bus.devs if d is not dev)))


def _replace_bus(vm: VM, old: IoBus, new: IoBus, *, wait: bool = True) -> None:
    """Publish ``new``, wait for the readers of ``old`` (``synchronize_srcu_expedited``), free
    ``old``; the caller read ``old`` on the update side. ``wait=False`` is the mutant's skip."""
    vm.buses.assign(new)
    if wait and not vm.hazards.free_before_grace_period:
        vm.srcu.synchronize()
    old.free()


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
    bus = vm.buses.srcu_dereference(vm.srcu)
    bus.live()
    dev = bus.find(addr)
    if dev is None:
        return False
    dev.write(value)
    return True
