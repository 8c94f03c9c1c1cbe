"""The host machine: the global half of KVM's locking.

One :class:`Machine` is one host kernel with KVM loaded. It owns what is global in KVM:

* ``kvm_lock`` (a mutex) guarding the list of VMs, and -- in the design locking.rst describes
  first -- also ``kvm_usage_count`` and turning hardware virtualization on and off per CPU;
* optionally (``usage_lock=True``, the newer kernels' design) a separate ``kvm_usage_lock``
  taking over the usage count and hardware enabling, so ``kvm_lock`` guards only the VM list;
* ``cpu_hotplug_lock`` with CPU online/offline callbacks: hot-plugging a CPU runs KVM's
  callback with the hotplug lock held for write, so everything KVM takes inside that callback is
  ordered *inside* the hotplug lock -- the reason ``cpus_read_lock`` is taken outside
  ``kvm_lock`` and never the other way round;
* ``vendor_module_lock``, serialising the load of a vendor module (see :mod:`kvmlock.kvm.vendor`);
* per CPU: whether hardware virtualization is enabled, whether the CPU is online, and the
  ``wakeup_vcpus_on_cpu_lock`` raw spinlock with its list of blocked vCPUs waiting for a
  posted-interrupt wakeup (see :mod:`kvmlock.kvm.posted_intr`).

Hardware invariant (checked by :meth:`Machine.check_hardware`): whenever the machine is quiet,
a CPU has virtualization enabled exactly when it is online and at least one VM exists
(``kvm_usage_count > 0``), and in the ``kvm_usage_lock`` design KVM's hotplug callbacks are
installed exactly when a VM exists. Creating a VM must not race with a CPU going down in a way
that leaves an offline CPU enabled, nor with one coming up in a way that leaves an online CPU
disabled, nor with the last VM's teardown in a way that turns virtualization off under the new
VM. It is checked at the end of every scenario that builds a machine (:func:`checked_at_end`),
when a vCPU enters guest mode, and when a CPU comes online with ``kvm_lock`` held (the older
design, where that lock makes the whole state stable).

The plain per-CPU state (online bit, enabled bit) is shared between tasks, so each read and
write of it is a visible operation for the explorer (``runtime.point``), as an IPI or a hotplug
step would be on real hardware.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmlock import irq, runtime
from kvmlock.kvm.mutants import Hazards, hazards_of, lock_kind, mutant, unless
from kvmlock.sync import (
    CpuHotplugLock,
    Mutex,
    RawSpinLock,
    SpinLock,
    data_racy,
    guarded_by,
    peek,
)

if TYPE_CHECKING:
    from kvmlock.kvm.vm import VM

__all__ = ["HardwareEnableError", "Machine", "PerCpu", "checked_at_end"]


USAGE_WITHOUT_LOCK = mutant(
    "usage_without_lock", removes="kvm_usage_lock (new design) / kvm_lock (old design) around "
    "kvm_usage_count and hardware enabling",
    breaks="kvm_usage_count and hardware enable/disable are protected by kvm_usage_lock "
           "(kvm_lock in the old design)")
VM_LIST_WITHOUT_KVM_LOCK = mutant(
    "vm_list_without_kvm_lock", removes="kvm_lock around publishing and unpublishing a VM on "
    "vm_list", breaks="kvm_lock protects vm_list")
CALLBACK_WITHOUT_KVM_LOCK = mutant(
    "callback_without_kvm_lock", removes="kvm_lock in the old design's CPU hotplug callbacks",
    breaks="kvm_lock protects kvm_usage_count: the hotplug callbacks read it under kvm_lock")
ENABLE_WITHOUT_HOTPLUG_LOCK = mutant(
    "enable_without_hotplug_lock", removes="cpus_read_lock around enabling/disabling hardware",
    breaks="hardware enable/disable walks the online CPUs with CPU hotplug disabled")

DISABLE_WITHOUT_HOTPLUG_LOCK = mutant(
    "disable_without_hotplug_lock", removes="cpus_read_lock around the last VM's hardware "
    "disabling (hardware_disable_all: the online CPUs walked, and in the kvm_usage_lock design "
    "the hotplug callbacks removed, with CPU hotplug allowed)",
    breaks="hardware disable is one step against CPU hotplug: a CPU coming online while the "
           "last VM goes must not be left with virtualization on and kvm_usage_count 0")


CPUS_DISABLED_AFTER_HOTPLUG_UNLOCK = mutant(
    "cpus_disabled_after_hotplug_unlock", removes="disabling the CPUs in the same "
    "cpus_read_lock section that removes the hotplug callbacks (kvm_usage_lock design): the "
    "callbacks are removed under it, the CPUs disabled after cpus_read_unlock",
    breaks="cpu_hotplug_lock holds the online mask still while the last VM's disable walks it: "
           "a CPU going offline in between is disabled by neither the removed callback nor "
           "the walk")
NX_WALK_HOLDS_KVM_LOCK = mutant(
    "nx_walk_holds_kvm_lock", removes="dropping kvm_lock before the NX-huge-pages write locks "
    "each VM's slots_lock (it zaps every VM with kvm_lock held)",
    breaks="kvm_lock must not take kvm->slots_lock")
ENABLE_AFTER_USAGE_UNLOCK = mutant(
    "enable_after_usage_unlock", removes="holding kvm_usage_lock until the first VM's "
    "hardware enabling is done (the count is bumped under it, the enabling runs after)",
    breaks="a VM creation returns only once virtualization is on: a second creator that sees "
           "the count already non-zero must not get ahead of the first one's enabling")
USAGE_LOCK_INSIDE_HOTPLUG = mutant(
    "usage_lock_inside_hotplug",
    removes="(adds) kvm_usage_lock taken inside cpus_read_lock when enabling",
    breaks="kvm_usage_lock is taken outside cpus_read_lock")
FAILED_ENABLE_UNINSTALLS_APART = mutant(
    "failed_enable_uninstalls_apart", removes="rolling back a failed first enable in the "
    "cpus_read_lock section that installed the hotplug callbacks (kvm_usage_lock design: "
    "they are removed after cpus_read_unlock)",
    breaks="a failed VM creation leaves nothing enabled: a CPU coming online between the "
           "enabling's section and the late removal finds the callbacks installed, is enabled "
           "by them, and stays enabled with kvm_usage_count 0")
CALLBACKS_INSTALLED_APART = mutant(
    "callbacks_installed_apart", removes="installing the hotplug callbacks in the same "
    "cpus_read_lock section that enables the online CPUs (kvm_usage_lock design: the first VM "
    "enables them in one section and installs the callbacks in a second)",
    breaks="kvm_usage_lock design: the first VM's enabling is one step against CPU hotplug "
           "(cpuhp_setup_state installs and calls the online callback under one "
           "cpus_read_lock); a CPU coming online between two sections is missed by the walk "
           "and by the callback, and runs with virtualization off while VMs exist")
ONLINE_ENABLE_FAILURE_IGNORED = mutant(
    "online_enable_failure_ignored", removes="the CPU-online callback's report of a failed "
    "virtualization enable (kvm_usage_lock design: the CPU comes online anyway)",
    breaks="while a VM exists, a CPU is online only with virtualization on: its vCPUs may be "
           "scheduled there, and VMLAUNCH/VMRUN faults on a CPU with it off")
FAILED_ENABLE_ROLLED_BACK_APART = mutant(
    "failed_enable_rolled_back_apart", removes="rolling kvm_usage_count back after a failed "
    "first enable in the kvm_lock section that raised it (kvm_lock design: the count is "
    "lowered in a second kvm_lock section)",
    breaks="kvm_lock protects kvm_usage_count and hardware enabling as one step: a second VM "
           "created between the sections sees the count non-zero, skips enabling, and runs "
           "with virtualization off")
CALLBACKS_REMOVED_APART = mutant(
    "callbacks_removed_apart", removes="removing the hotplug callbacks in the same "
    "cpus_read_lock section that disables the online CPUs (the last VM disables them in one "
    "section and uninstalls the callbacks in a second)",
    breaks="kvm_usage_lock design: the last VM's teardown is one step against CPU hotplug; a "
           "CPU coming online between the two sections is enabled by the still-installed "
           "callback and stays enabled with kvm_usage_count 0")
DISABLE_AFTER_KVM_LOCK_UNLOCK = mutant(
    "disable_after_kvm_lock_unlock", removes="holding kvm_lock across the last VM's hardware "
    "disabling (kvm_lock design: kvm_usage_count drops to 0 under it, every CPU is disabled "
    "after it is dropped)",
    breaks="kvm_lock makes the count's drop to 0 and the disabling one step: a VM created in "
           "between counts 0 -> 1 and enables every CPU, and the late disable turns "
           "virtualization off under that VM")
TEARDOWN_AFTER_USAGE_UNLOCK = mutant(
    "teardown_after_usage_unlock", removes="holding kvm_usage_lock across the last VM's "
    "teardown (kvm_usage_lock design: kvm_usage_count drops to 0 under it; the hotplug "
    "callbacks are removed and every CPU disabled after it is dropped)",
    breaks="kvm_usage_lock makes the count's drop to 0 and the teardown one step: a VM "
           "created in between installs the callbacks and enables every CPU, and the late "
           "teardown removes and disables them under that VM")
CPUFREQ_HOTPLUG_INSIDE_KVM_LOCK = mutant(
    "cpufreq_hotplug_inside_kvm_lock",
    removes="(adds) cpus_read_lock taken inside kvm_lock by the cpufreq notifier",
    breaks="cpus_read_lock is taken outside kvm_lock")


HV_TSC_NOTIFIER_WALKS_UNLOCKED = mutant(
    "hv_tsc_notifier_walks_unlocked", removes="kvm_lock across the Hyper-V clock notifier's "
    "walk (vm_list copied under it, each VM's page rewritten after it is dropped, with no "
    "reference taken on the VMs)",
    breaks="kvm_lock protects vm_list: a VM reached through it is not freed while the walk "
           "uses it (kvm_destroy_vm unpublishes it under kvm_lock first)")
HV_TSC_PAGE_WITHOUT_TSC_WRITE_LOCK = mutant(
    "hv_tsc_page_without_tsc_write_lock", removes="tsc_write_lock around the Hyper-V clock "
    "notifier's rewrite of a VM's reference TSC page",
    breaks="kvm->arch.tsc_write_lock protects the reference TSC page")
KVM_LOCK_SPINLOCK = mutant(
    "kvm_lock_spinlock", removes="the sleeping kind of kvm_lock (made a spinlock_t)",
    breaks="kvm_lock is a mutex: what runs under it (hardware enabling, notifier walks) "
           "may sleep")
WAKEUP_LOCK_SPINLOCK_T = mutant(
    "wakeup_lock_spinlock_t",
    removes="the raw kind of wakeup_vcpus_on_cpu_lock (made a spinlock_t)",
    breaks="wakeup_vcpus_on_cpu_lock is a raw spinlock: a hard interrupt takes it")
WAKEUP_LOCK_MUTEX = mutant(
    "wakeup_lock_mutex", removes="the spinning kind of wakeup_vcpus_on_cpu_lock (made a mutex)",
    breaks="wakeup_vcpus_on_cpu_lock is a raw spinlock: a hard interrupt takes it")
TK_CORE_LOCK_MUTEX = mutant(
    "tk_core_lock_mutex", removes="the spinning kind of tk_core.lock (made a mutex)",
    breaks="tk_core.lock is a raw spinlock: the timer tick, a hard interrupt, holds it")
TK_CORE_LOCK_SPINLOCK_T = mutant(
    "tk_core_lock_spinlock_t", removes="the raw kind of tk_core.lock (made a spinlock_t, "
    "which sleeps on PREEMPT_RT)",
    breaks="tk_core.lock is a raw spinlock: the timer tick, a hard interrupt, holds it")


#: the machines built by the running scenario body, checked once it returns (checked_at_end)
_BUILT: ContextVar[list[Machine] | None] = ContextVar("kvmlock_machines_built", default=None)


def checked_at_end(body: Callable[[], None]) -> Callable[[], None]:
    """``body``, followed by :meth:`Machine.check_quiet` on every machine it built.

    The end of a scenario body (every task joined) is the one moment every machine is quiet,
    so its invariants hold there whatever the body was written to check. A state
    that only a transient race produces and a later step repairs is not seen here: the
    checks at vCPU entry and CPU online are for those.
    """

    if inspect.iscoroutinefunction(body):  # an async body: checked once it has finished
        @functools.wraps(body)
        async def arun() -> None:
            with _checking_built():
                await body()

        return arun  # type: ignore[return-value]

    @functools.wraps(body)
    def run() -> None:
        with _checking_built():
            body()

    return run


@contextmanager
def _checking_built() -> Iterator[None]:
    """Collect the machines built inside, and check each once the block returns normally."""
    built: list[Machine] = []
    token = _BUILT.set(built)
    try:
        yield
    finally:
        _BUILT.reset(token)
    for m in built:
        m.check_quiet()


class _CallbackState:
    """The hotplug core's record of whether KVM's online/offline callbacks are installed: the
    owner of the visible steps that read and change it."""

    name = "cpuhp state (KVM callbacks)"


class HardwareEnableError(RuntimeError):
    """Virtualization could not be turned on (on some CPU); nothing was left half-enabled."""


@dataclass(eq=False)
class PerCpu:
    """What KVM keeps per physical CPU."""

    cpu: int
    online: bool = True
    hardware_enabled: bool = False
    #: ``wakeup_vcpus_on_cpu_lock``: one lock class for all CPUs, as in the kernel's per-CPU var.
    wakeup_lock: RawSpinLock = field(default=None)  # type: ignore[assignment]
    #: ``wakeup_vcpus_on_cpu``: vCPUs blocked on this CPU that a posted interrupt must wake.
    wakeup_vcpus_on_cpu = guarded_by("wakeup_lock")

    @property
    def name(self) -> str:
        """How trace tables name this CPU's state."""
        return f"cpu{self.cpu}"

    def __post_init__(self) -> None:
        if self.wakeup_lock is None:
            self.wakeup_lock = RawSpinLock("wakeup_vcpus_on_cpu_lock")
        self.wakeup_vcpus_on_cpu: list[Any] = []


class Machine:
    """A host with ``nr_cpus`` CPUs and KVM loaded.

    ``usage_lock`` picks the design: ``False`` -- ``kvm_lock`` guards the usage count and
    hardware enabling, taken inside ``cpus_read_lock`` and inside the hotplug callbacks; ``True``
    -- ``kvm_usage_lock`` does, taken outside ``cpus_read_lock``, and the hotplug callbacks are
    only installed while the count is non-zero (so they take no KVM lock at all).

    ``enable_blocks_hotplug=False`` is a deliberately broken variant (either design): hardware
    is enabled for the first VM without holding ``cpus_read_lock``, so a CPU can go offline
    half-way through.
    ``fail_enable_on`` names CPUs whose virtualization enable fails (for the error paths).
    """

    #: the VMs, published and unpublished under ``kvm_lock``
    vm_list = guarded_by("kvm_lock")
    #: VMs using hardware virtualization; guarded by whichever lock the design gives it
    kvm_usage_count = guarded_by("usage_lock")
    #: a log for humans, in the order the steps ran
    events = data_racy(
        "a log for failure messages: appended by whichever path acts (a count change under "
        "the usage lock, a hotplug step under the hotplug lock), never read by the model to "
        "decide anything; its order is the interleaving's, which is what a reader wants")

    def __init__(
        self,
        nr_cpus: int = 2,
        *,
        usage_lock: bool = False,
        enable_blocks_hotplug: bool = True,
        fail_enable_on: tuple[int, ...] | frozenset[int] = (),
        offline: tuple[int, ...] | frozenset[int] = (),
        hazards: Hazards | dict[str, bool] | set[str] | None = None,
    ) -> None:
        if not isinstance(nr_cpus, int) or isinstance(nr_cpus, bool) or not 1 <= nr_cpus <= 64:
            raise ValueError(f"Machine: nr_cpus must be an integer in 1..64, got {nr_cpus!r}")
        for what, cpus in (("fail_enable_on", fail_enable_on), ("offline", offline)):
            if isinstance(cpus, int | str) or not hasattr(cpus, "__iter__"):
                raise TypeError(f"Machine: {what} must be a collection of CPU numbers, "
                                f"got {cpus!r}")
            bad = [c for c in cpus if not isinstance(c, int) or not 0 <= c < nr_cpus]
            if bad:
                raise ValueError(f"Machine: {what} names CPUs that do not exist: {bad} "
                                 f"(this machine has CPUs 0..{nr_cpus - 1})")
        if 0 in offline:
            raise ValueError("Machine: CPU 0 is the boot CPU and cannot start offline")
        self.nr_cpus = nr_cpus
        #: the model's mutants (weakened protections); VMs created here inherit them
        self.hazards = hazards_of(hazards)
        self.usage_lock_design = bool(usage_lock)
        self.enable_blocks_hotplug = bool(enable_blocks_hotplug) and \
            ENABLE_WITHOUT_HOTPLUG_LOCK not in self.hazards
        self.fail_enable_on = frozenset(fail_enable_on)
        self._rt = runtime.active()

        self.kvm_lock = lock_kind(self.hazards, Mutex, (KVM_LOCK_SPINLOCK, SpinLock))("kvm_lock")
        self.kvm_usage_lock: Mutex | None = Mutex("kvm_usage_lock") if usage_lock else None
        self.cpu_hotplug_lock = CpuHotplugLock()
        self.vendor_module_lock = Mutex("vendor_module_lock")
        #: the timekeeping core's lock, held in the timer tick (see kvmlock.kvm.tsc.KvmClock)
        self.timekeeper_lock = lock_kind(self.hazards, RawSpinLock, (TK_CORE_LOCK_MUTEX, Mutex),
                                         (TK_CORE_LOCK_SPINLOCK_T, SpinLock))("tk_core.lock")

        self.vm_list: list[VM] = []
        self.kvm_usage_count = 0
        #: newer design: KVM's hotplug callbacks are registered only while VMs exist.
        self.hotplug_callbacks_installed = not usage_lock
        self._callback_state = _CallbackState()
        wakeup = lock_kind(self.hazards, RawSpinLock, (WAKEUP_LOCK_SPINLOCK_T, SpinLock),
                           (WAKEUP_LOCK_MUTEX, Mutex))
        self.cpus = [PerCpu(c, online=c not in offline,
                            wakeup_lock=wakeup("wakeup_vcpus_on_cpu_lock"))
                     for c in range(nr_cpus)]
        #: the loaded vendor module's name (kvm_intel / kvm_amd), see kvmlock.kvm.vendor.
        self.vendor: str | None = None
        self.events: list[str] = []  # a short log for humans: "cpu1 offline", "enable cpu0" ...
        #: what the last VM's teardown did while kvm_usage_count was above 0 again (a VM
        #: created since the count reached 0): names the hazard when the invariant breaks
        self.stale_teardown: list[str] = []
        #: what else must hold once the machine is quiet, registered by what lives on it
        #: (a posted-interrupt descriptor: every vector posted is delivered or pending)
        self.quiet_checks: list[Callable[[], None]] = []
        built = _BUILT.get()
        if built is not None:
            built.append(self)

    @property
    def usage_lock(self) -> Mutex:
        """The lock that guards ``kvm_usage_count``: ``kvm_usage_lock``, or ``kvm_lock`` in the
        older design."""
        return self.kvm_lock if self.kvm_usage_lock is None else self.kvm_usage_lock

    # ------------------------------------------------------------------ plain shared state

    def percpu(self, cpu: int) -> PerCpu:
        """CPU ``cpu``'s state; a clear error for a CPU the machine does not have."""
        if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.nr_cpus:
            raise ValueError(f"no CPU {cpu!r} on this machine (CPUs 0..{self.nr_cpus - 1})")
        return self.cpus[cpu]

    def online_cpus(self) -> list[int]:
        """The online mask as read now; each CPU's bit is read as a separate step."""
        out = []
        for pc in self.cpus:
            self._rt.point(pc, "read online", False)
            if pc.online:
                out.append(pc.cpu)
        return out

    # ------------------------------------------------------------------ per-CPU enable

    def _enable_cpu(self, cpu: int) -> bool:
        """``hardware_enable_nolock`` on one CPU: idempotent; False when the CPU refuses."""
        pc = self.cpus[cpu]
        self._rt.point(pc, "hardware_enable", True)
        if pc.hardware_enabled:
            return True
        if cpu in self.fail_enable_on:
            self.events.append(f"enable cpu{cpu} failed")
            return False
        pc.hardware_enabled = True
        self.events.append(f"enable cpu{cpu}")
        return True

    def _disable_cpu(self, cpu: int, *, last_vm: bool = False) -> None:
        pc = self.cpus[cpu]
        self._rt.point(pc, "hardware_disable", True)
        if last_vm:
            self._note_teardown(f"disabled cpu{cpu}")
        if pc.hardware_enabled:
            pc.hardware_enabled = False
            self.events.append(f"disable cpu{cpu}")

    def _enable_online_cpus(self) -> None:
        """``on_each_cpu(hardware_enable)``; on any failure every CPU is turned back off."""
        failed = [cpu for cpu in self.online_cpus() if not self._enable_cpu(cpu)]
        if failed:
            for cpu in range(self.nr_cpus):
                self._disable_cpu(cpu)
            raise HardwareEnableError(
                f"enabling virtualization failed on CPU(s) {failed}; no CPU was left enabled")

    def _disable_all_cpus(self) -> None:
        """The last VM's ``on_each_cpu(hardware_disable)``."""
        for cpu in self.online_cpus():
            self._disable_cpu(cpu, last_vm=True)

    def _note_teardown(self, what: str) -> None:
        """Record a teardown step taken while a VM counts again (a diagnosis, not a check:
        the invariant judges the state it leaves)."""
        count = peek(self, "kvm_usage_count")
        if count > 0:
            self.stale_teardown.append(f"{what} with kvm_usage_count={count}")

    # ------------------------------------------------------------------ usage count

    def _usage(self) -> int:
        """Read ``kvm_usage_count`` (guarded: lockdep reports a read without its lock)."""
        self._rt.point(self, "read kvm_usage_count", False)
        return self.kvm_usage_count

    def _set_usage(self, n: int) -> None:
        """Write it back: a separate step, so two updaters without the lock lose one."""
        self._rt.point(self, "write kvm_usage_count", True)
        self.events.append(f"kvm_usage_count {self.kvm_usage_count}->{n}")
        self.kvm_usage_count = n

    def _callbacks(self) -> bool:
        """Whether KVM's hotplug callbacks are installed (a visible read: the hotplug core
        looks them up as it brings a CPU up or down)."""
        self._rt.point(self._callback_state, "read KVM callbacks", False)
        return self.hotplug_callbacks_installed

    def _set_callbacks(self, installed: bool, *, last_vm: bool = False) -> None:
        """``cpuhp_setup_state`` / ``cpuhp_remove_state`` (a visible write)."""
        self._rt.point(self._callback_state, "set KVM callbacks", True)
        if last_vm:
            self._note_teardown("removed the hotplug callbacks")
        self.events.append("callbacks installed" if installed else "callbacks removed")
        self.hotplug_callbacks_installed = installed

    def _hotplug_read(self) -> AbstractContextManager[object]:
        """``cpus_read_lock`` around enabling -- or nothing, in the broken variant."""
        return self.cpu_hotplug_lock.read() if self.enable_blocks_hotplug else nullcontext()

    def _hotplug_read_disable(self) -> AbstractContextManager[object]:
        """``cpus_read_lock`` around the last VM's disabling -- or nothing (two mutants)."""
        if DISABLE_WITHOUT_HOTPLUG_LOCK in self.hazards:
            return nullcontext()
        return self._hotplug_read()

    def hardware_enable_all(self) -> None:
        """Count one more VM; the first one turns virtualization on, on every online CPU.

        Old design: ``cpus_read_lock`` then ``kvm_lock``, so no CPU can come or go while the
        online mask is walked and the count changes. New design: ``kvm_usage_lock`` then
        ``cpus_read_lock`` (installing the hotplug callbacks is what takes it).
        """
        locked = unless(USAGE_WITHOUT_LOCK, self.hazards, self.usage_lock)
        if self.kvm_usage_lock is None and FAILED_ENABLE_ROLLED_BACK_APART in self.hazards:
            try:
                with self._hotplug_read(), locked:
                    n = self._usage() + 1
                    self._set_usage(n)
                    if n == 1:
                        self._enable_online_cpus()
            except HardwareEnableError:
                with locked:  # broken: another creator may have counted itself meanwhile
                    self._set_usage(self._usage() - 1)
                raise
            return
        if self.kvm_usage_lock is not None:
            if self.hazards.usage_lock_inside_hotplug:
                with self.cpu_hotplug_lock.read(), self.kvm_usage_lock:  # broken order
                    pass
            if ENABLE_AFTER_USAGE_UNLOCK in self.hazards:
                with locked:  # broken: the enabling below runs after the lock is dropped
                    n = self._usage() + 1
                    self._set_usage(n)
                if n == 1:
                    self._first_enable()
                return
            with locked:
                n = self._usage() + 1
                self._set_usage(n)
                if n == 1:
                    self._first_enable()
            return
        with self._hotplug_read(), locked:
            n = self._usage() + 1
            self._set_usage(n)
            if n == 1:
                try:
                    self._enable_online_cpus()
                except HardwareEnableError:
                    self._set_usage(self._usage() - 1)
                    raise

    def _first_enable(self) -> None:
        """New design: the first VM installs the hotplug callbacks and enables every CPU."""
        apart = FAILED_ENABLE_UNINSTALLS_APART in self.hazards
        late = CALLBACKS_INSTALLED_APART in self.hazards
        try:
            with self._hotplug_read():
                if not late:
                    self._set_callbacks(True)
                try:
                    self._enable_online_cpus()
                except HardwareEnableError:
                    # rolled back inside the same cpus_read_lock section, as cpuhp_setup_state
                    # does: a CPU coming online right after must not find the callbacks
                    if not apart:
                        self._set_callbacks(False)
                    raise
            if late:
                with self._hotplug_read():  # broken: a CPU may have come online meanwhile
                    self._set_callbacks(True)
        except HardwareEnableError:
            if apart:
                self._set_callbacks(False)  # broken: CPU hotplug was allowed in between
            self._set_usage(self._usage() - 1)
            raise

    def run_vcpu_on(self, cpu: int) -> bool:
        """A vCPU of a live VM enters guest mode on ``cpu`` (pinned online while it does).

        VMLAUNCH/VMRUN on a CPU with virtualization off faults, so this asserts it is on;
        False when the CPU is offline (the vCPU would run elsewhere).
        """
        with self.cpu_hotplug_lock.read():
            pc = self.cpus[cpu]
            self._rt.point(pc, "vmentry", False)
            if not pc.online:
                return False
            assert pc.hardware_enabled, (
                f"a vCPU entered guest mode on cpu{cpu} with virtualization off "
                f"(kvm_usage_count={peek(self, 'kvm_usage_count')}): "
                f"{self._why_off()} (events: {', '.join(self.events) or 'none'})")
            return True

    def _why_off(self) -> str:
        """The hazard behind an online CPU found with virtualization off while a VM exists."""
        if self.stale_teardown:
            lock = "kvm_lock" if self.kvm_usage_lock is None else "kvm_usage_lock"
            return (f"the last VM's teardown ran after a new VM had counted itself and "
                    f"enabled the hardware ({'; '.join(self.stale_teardown)}): the count's "
                    f"drop to 0 and the teardown must be one {lock} section")
        return ("the hardware was never enabled for the VM that counts: a creation returned, "
                "or a CPU came online, without enabling it")

    def hardware_disable_all(self) -> None:
        """Count one VM less; the last one turns virtualization off everywhere."""
        locked = unless(USAGE_WITHOUT_LOCK, self.hazards, self.usage_lock)
        outer: AbstractContextManager[object]
        if self.kvm_usage_lock is not None:
            # the teardown takes cpus_read_lock itself, inside kvm_usage_lock
            outer, teardown = nullcontext(), self._last_teardown
            late = TEARDOWN_AFTER_USAGE_UNLOCK in self.hazards
        else:
            # the old design takes cpus_read_lock outside kvm_lock
            outer, teardown = self._hotplug_read_disable(), self._disable_all_cpus
            late = DISABLE_AFTER_KVM_LOCK_UNLOCK in self.hazards
        with outer:
            with locked:
                n = self._check_count() - 1
                self._set_usage(n)
                if n == 0 and not late:
                    teardown()
            if n == 0 and late:
                teardown()  # broken: the next VM may have set everything up again

    def _last_teardown(self) -> None:
        """New design: the last VM removes the hotplug callbacks and disables every CPU, in one
        ``cpus_read_lock`` section (``cpuhp_remove_state`` calls the offline callback)."""
        if CALLBACKS_REMOVED_APART in self.hazards:
            with self._hotplug_read():
                self._disable_all_cpus()
            with self._hotplug_read():
                self._set_callbacks(False, last_vm=True)
            return
        apart = CPUS_DISABLED_AFTER_HOTPLUG_UNLOCK in self.hazards
        with self._hotplug_read_disable():
            self._set_callbacks(False, last_vm=True)
            if not apart:
                self._disable_all_cpus()
        if apart:
            self._disable_all_cpus()  # broken: the online mask may change first

    def _check_count(self) -> int:
        n = self._usage()
        if n <= 0:
            raise RuntimeError("hardware_disable_all without a matching hardware_enable_all "
                               "(kvm_usage_count is already 0)")
        return n

    # ------------------------------------------------------------------ CPU hotplug

    def _online_callback(self, cpu: int) -> bool:
        """KVM's CPU-online callback; runs with ``cpu_hotplug_lock`` held for write."""
        if self.kvm_usage_lock is not None:
            # Installed only while VMs exist, and (un)installing takes cpus_read_lock, which
            # our caller's write hold excludes: the flag is stable here without a KVM lock.
            if ONLINE_ENABLE_FAILURE_IGNORED in self.hazards and self._callbacks():
                self._enable_cpu(cpu)  # broken: the CPU comes online with virtualization off
                return True
            return self._enable_cpu(cpu) if self._callbacks() else True
        with unless(CALLBACK_WITHOUT_KVM_LOCK, self.hazards, self.kvm_lock):
            ok = self._enable_cpu(cpu) if self._usage() else True
            if ok:  # hotplug and kvm_lock held: nothing can be half-way, check it all
                self.check_hardware(f"as cpu{cpu} came online")
            return ok

    def _offline_callback(self, cpu: int) -> None:
        if self.kvm_usage_lock is not None:
            if self._callbacks():
                self._disable_cpu(cpu)
            return
        with unless(CALLBACK_WITHOUT_KVM_LOCK, self.hazards, self.kvm_lock):
            if self._usage():
                self._disable_cpu(cpu)

    def cpu_up(self, cpu: int) -> bool:
        """Bring a CPU online; False (CPU left offline) when KVM cannot enable it for its VMs."""
        pc = self.percpu(cpu)
        with self.cpu_hotplug_lock.write():
            self._rt.point(pc, "set online", True)
            if pc.online:
                return True
            pc.online = True  # the CPU is in the online mask before the ONLINE callbacks run
            self.events.append(f"cpu{cpu} online")
            if self._online_callback(cpu):
                return True
            self._rt.point(pc, "rollback online", True)
            pc.online = False
            self.events.append(f"cpu{cpu} online aborted")
            return False

    def cpu_down(self, cpu: int) -> None:
        """Take a CPU offline: KVM's callback turns its virtualization off first."""
        pc = self.percpu(cpu)
        if cpu == 0:
            raise ValueError("CPU 0 is the boot CPU of this model and cannot go offline")
        with self.cpu_hotplug_lock.write():
            self._rt.point(pc, "read online", False)
            if not pc.online:
                return
            self._offline_callback(cpu)
            self._rt.point(pc, "clear online", True)
            pc.online = False
            self.events.append(f"cpu{cpu} offline")

    def cpufreq_notifier(self) -> int:
        """A frequency change: the kvmclock notifier walks ``vm_list`` under ``kvm_lock``.

        It is called with ``cpus_read_lock`` held (e.g. when boost is toggled), one more place
        that puts the hotplug lock outside ``kvm_lock``. Returns how many VMs were told.
        """
        if self.hazards.cpufreq_hotplug_inside_kvm_lock:
            with self.kvm_lock, self.cpu_hotplug_lock.read():  # broken order
                return len(self.vm_list)
        with self.cpu_hotplug_lock.read(), self.kvm_lock:
            return len(self.vm_list)

    def hyperv_tsc_notifier(self) -> int:
        """The Hyper-V clock notifier (the host's TSC page changed): update every VM's clock.

        It walks ``vm_list`` under ``kvm_lock`` and, for each VM, stops its clock updates with
        interrupts off and the raw ``tsc_write_lock`` held while the reference TSC page is
        rewritten -- so ``kvm_lock`` is *not* a leaf: ``tsc_write_lock`` nests inside it, and
        nothing nests inside that. Returns how many VMs were updated.
        """
        if HV_TSC_NOTIFIER_WALKS_UNLOCKED in self.hazards:
            with self.kvm_lock:
                vms = list(self.vm_list)  # broken: no kvm_get_kvm(), and kvm_lock dropped
            for vm in vms:
                self._rewrite_tsc_page(vm)
            return len(vms)
        with self.kvm_lock:
            for vm in self.vm_list:
                self._rewrite_tsc_page(vm)
            return len(self.vm_list)

    def _rewrite_tsc_page(self, vm: VM) -> None:
        # __kvm_start_pvclock_update: raw_spin_lock_irq, interrupts off (guest entries
        # stopped) before the lock is taken
        with irq.local_irq_save(), unless(HV_TSC_PAGE_WITHOUT_TSC_WRITE_LOCK, vm.hazards,
                                          vm.tsc_write_lock):
            self._rt.point(vm, "update reference TSC page", True)
            assert not vm.freed, (
                f"the Hyper-V clock notifier rewrote the reference TSC page of {vm.name}, "
                "which kvm_destroy_vm has freed: it reached the VM through vm_list without "
                "kvm_lock or a reference")
            vm.hv_tsc_page_updates += 1

    def static_key_update(self) -> None:
        """Patch a static key (e.g. a vCPU changing its local APIC base during KVM_RUN).

        Code patching holds ``cpus_read_lock``, wherever it is called from -- including inside
        a ``kvm->srcu`` read side, which puts ``kvm->srcu`` outside the hotplug lock.
        """
        with self.cpu_hotplug_lock.read():
            pass

    def update_nx_huge_pages(self) -> int:
        """A write of the NX-huge-pages parameter: zap every VM's MMU under its ``slots_lock``.

        The walk of ``vm_list`` needs ``kvm_lock``; the zap needs each VM's ``slots_lock``.
        Taking ``slots_lock`` with ``kvm_lock`` held (mutant ``nx_walk_holds_kvm_lock``, what
        kernels did until 2025) puts ``kvm_lock`` outside ``slots_lock``, which closes a
        four-lock cycle with the memslot update, the cpufreq notifier and a static-key patch
        under SRCU. The
        fix keeps ``slots_lock`` out from under ``kvm_lock`` (the model's document: "kvm_lock
        must not take kvm->slots_lock"): take a reference to each VM under it, drop it, then
        lock each VM. Returns how many VMs were zapped.
        """
        if NX_WALK_HOLDS_KVM_LOCK in self.hazards:
            with self.kvm_lock:
                for vm in self.vm_list:
                    with vm.slots_lock:
                        pass
                return len(self.vm_list)
        with self.kvm_lock:
            vms = list(self.vm_list)  # kvm_get_kvm() on each: they stay valid after unlock
        for vm in vms:
            with vm.slots_lock:
                pass
        return len(vms)

    # ------------------------------------------------------------------ VMs

    def create_vm(self, **opts: Any) -> VM:
        """``KVM_CREATE_VM``: build the VM, enable hardware, then publish it on ``vm_list``."""
        from kvmlock.kvm.vm import VM

        opts.setdefault("hazards", self.hazards)
        vm = VM(self, **opts)
        self.hardware_enable_all()
        with unless(VM_LIST_WITHOUT_KVM_LOCK, self.hazards, self.kvm_lock):
            self.vm_list.append(vm)
        return vm

    def destroy_vm(self, vm: VM) -> None:
        """Unpublish the VM, then drop its hold on hardware virtualization."""
        with unless(VM_LIST_WITHOUT_KVM_LOCK, self.hazards, self.kvm_lock):
            try:
                self.vm_list.remove(vm)
            except ValueError:
                raise ValueError(f"destroy_vm: {vm!r} is not on this machine's vm_list "
                                 f"(already destroyed, or created elsewhere)") from None
        self.hardware_disable_all()
        # kvm_arch_free_vm: a visible write of the VM, so a walker still using it is seen
        self._rt.point(vm, "free kvm", True)
        vm.freed = True

    # ------------------------------------------------------------------ invariant

    def check_quiet(self) -> None:
        """Every invariant of a quiet machine: the hardware's, then each registered check."""
        self.check_hardware()
        for check in self.quiet_checks:
            check()

    def check_hardware(self, when: str = "once quiet") -> None:
        """Assert the hardware invariant; call it when no enable/disable/hotplug is in flight.

        A CPU is enabled exactly when it is online and ``kvm_usage_count > 0``; in the
        ``kvm_usage_lock`` design the hotplug callbacks are installed exactly when the count
        is above 0. The message names the hazard each disagreement stands for.
        """
        count = peek(self, "kvm_usage_count")
        assert count >= 0, f"kvm_usage_count went negative ({count}) {when}"
        want_on = count > 0
        wrong = [
            f"cpu{pc.cpu}: online={pc.online} enabled={pc.hardware_enabled}"
            for pc in self.cpus
            if pc.hardware_enabled != (pc.online and want_on)
        ]
        hazards = []
        if any(pc.hardware_enabled and not pc.online for pc in self.cpus):
            hazards.append("a CPU went offline with virtualization on: an enable reached it "
                           "after its offline callback ran, or a disable walk missed it")
        if want_on and any(pc.online and not pc.hardware_enabled for pc in self.cpus):
            hazards.append("a VM exists but an online CPU has virtualization off, so its vCPUs "
                           "fault on entry there: " + self._why_off())
        if not want_on and any(pc.online and pc.hardware_enabled for pc in self.cpus):
            hazards.append("no VM exists but virtualization is still on: an enable ran after "
                           "the last VM's disable")
        if self.kvm_usage_lock is not None:
            installed = self.hotplug_callbacks_installed
            if installed != want_on:
                wrong.append(f"hotplug callbacks installed={installed}")
                hazards.append(
                    "a VM exists but KVM's hotplug callbacks are not installed, so a CPU "
                    "coming online is not enabled for it" + (
                        f": {self._why_off()}" if self.stale_teardown else "")
                    if want_on else
                    "no VM exists but KVM's hotplug callbacks are still installed, so a CPU "
                    "coming online is enabled for nobody")
        assert not wrong, (
            f"{when}, hardware virtualization state disagrees with kvm_usage_count={count}"
            f": {'; '.join(wrong)}. {' '.join(h[0].upper() + h[1:] + '.' for h in hazards)} "
            f"(events: {', '.join(self.events)})"
        )

    def __repr__(self) -> str:
        design = "kvm_usage_lock" if self.kvm_usage_lock is not None else "kvm_lock"
        return (f"<Machine cpus={self.nr_cpus} design={design} "
                f"vms={len(peek(self, 'vm_list'))} usage={peek(self, 'kvm_usage_count')}>")
