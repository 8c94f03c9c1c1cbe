"""Loading a vendor module (kvm_intel or kvm_amd) into the machine's common KVM.

Only one vendor module can back KVM at a time, so loading is serialised and a second load is
refused with ``EEXIST``. What serialises it matters: setting up a vendor module patches static
calls and registers hotplug state, and both take ``cpus_read_lock``. ``kvm_lock`` is taken
*inside* the hotplug lock (by the CPU online/offline callbacks and by notifiers that run with
``cpus_read_lock`` held), so serialising vendor init with ``kvm_lock`` closes a cycle
``kvm_lock -> cpu_hotplug_lock -> kvm_lock``: the circular dependency the kernel's lockdep
reported until a dedicated ``vendor_module_lock`` replaced ``kvm_lock`` here.

:func:`vendor_init` with ``serialize_with="vendor_module_lock"`` is the documented design;
``serialize_with="kvm_lock"`` is the historical broken variant.
"""

from __future__ import annotations

import errno

from kvmlock.kvm.machine import Machine
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import Mutex, peek

__all__ = ["VENDOR_MODULES", "VendorModuleError", "vendor_exit", "vendor_init"]

VENDOR_LOCK_INSIDE_HOTPLUG = mutant(
    "vendor_lock_inside_hotplug",
    removes="(adds) vendor_module_lock taken inside cpus_read_lock by vendor init",
    breaks="vendor_module_lock is taken outside cpus_read_lock")

VENDOR_INIT_WITHOUT_LOCK = mutant(
    "vendor_init_without_lock", removes="vendor_module_lock around loading a vendor module",
    breaks="vendor_module_lock makes a vendor module's check-and-install one step: a second "
           "module is refused")

VENDOR_MODULES = ("kvm_intel", "kvm_amd")
SERIALIZERS = ("vendor_module_lock", "kvm_lock")


class VendorModuleError(RuntimeError):
    """A vendor module load refused (``errno`` says why), with the machine left unchanged."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


def _serializer(machine: Machine, serialize_with: str) -> Mutex:
    if not isinstance(machine, Machine):
        raise TypeError(f"vendor module load needs a Machine, got {type(machine).__name__}")
    if serialize_with == "vendor_module_lock":
        return machine.vendor_module_lock
    if serialize_with == "kvm_lock":
        return machine.kvm_lock
    raise ValueError(f"serialize_with must be one of {SERIALIZERS}, got {serialize_with!r}")


def _check_name(name: str) -> str:
    if name not in VENDOR_MODULES:
        raise ValueError(f"unknown vendor module {name!r}; expected one of {VENDOR_MODULES}")
    return name


def vendor_init(machine: Machine, name: str, *,
                serialize_with: str = "vendor_module_lock") -> None:
    """Make ``name`` the machine's vendor module, or raise :class:`VendorModuleError`.

    Steps, in the order the kernel does them: refuse if a vendor module is already loaded;
    check every online CPU is compatible and install the vendor's operations (patching static
    calls: ``cpus_read_lock``); register the hotplug callbacks (``cpus_read_lock`` again).
    """
    _check_name(name)
    lock = _serializer(machine, serialize_with)
    if machine.hazards.vendor_lock_inside_hotplug:
        with machine.cpu_hotplug_lock.read(), lock:  # broken: the lock is outside the hotplug one
            pass
    with unless(VENDOR_INIT_WITHOUT_LOCK, machine.hazards, lock):
        if machine.vendor is not None:
            raise VendorModuleError(
                f"{name}: vendor module {machine.vendor!r} is already loaded (EEXIST); "
                f"unload it first", errno.EEXIST)
        with machine.cpu_hotplug_lock.read():
            machine.online_cpus()  # the per-CPU compatibility check walks the online mask
            machine.vendor = name  # static_call_update(): the ops now point at the vendor
        with machine.cpu_hotplug_lock.read():
            machine.events.append(f"{name} hotplug callbacks registered")


def vendor_exit(machine: Machine, name: str, *,
                serialize_with: str = "vendor_module_lock") -> None:
    """Unload ``name``; refused with ``EBUSY`` while VMs still use hardware virtualization."""
    _check_name(name)
    lock = _serializer(machine, serialize_with)
    with lock:
        if machine.vendor != name:
            raise VendorModuleError(
                f"{name}: not the loaded vendor module (loaded: {machine.vendor!r})",
                errno.ENOENT)
        # Stands for the module's reference count, which every VM holds and the module loader
        # reads on its own (atomically, not under a KVM lock): so the count is peeked at here.
        users = peek(machine, "kvm_usage_count")
        if users:
            raise VendorModuleError(
                f"{name}: {users} VM(s) still use it (EBUSY)", errno.EBUSY)
        with machine.cpu_hotplug_lock.read():
            machine.vendor = None
