"""TSC synchronisation across a VM's vCPUs, under the raw ``tsc_write_lock``.

When userspace writes a vCPU's TSC, KVM decides whether the write is an attempt to keep the
vCPUs' TSCs in step (the value is zero, or it is within a second of what the previous write
would have grown to by now). If so, the vCPU joins the current "generation" and reuses its
offset exactly, so all of them tick together; otherwise the write opens a new generation.

The decision reads and then updates the per-VM ``last_tsc_*`` / ``cur_tsc_*`` fields: it must be
one indivisible step, or two vCPUs written at the same moment can both open "the next"
generation with different offsets. The kernel makes it indivisible with ``tsc_write_lock``, a
            with irq.local_irq_save(), self.lock:  # raw_spin_lock_irqsave
                machine = getattr(self.vm, "machine", None)
                if self.vm.hazards.tsc_write_walks_vm_list and machine is not None:
                    with machine.kvm_lock:  # broken: kvm_lock is outside tsc_write_lock
                        pass

:class:`TscSync` holds that per-VM state beside the VM (the VM object owns the lock itself).
Those fields are declared guarded by the lock, so ``locked=False`` -- the broken variant
without it -- is reported by lockdep at the first unguarded access, whether or not the
schedule went on to split a generation.

Interrupts are off while the lock is held, as in the kernel, but nothing here depends on it:
no interrupt handler takes ``tsc_write_lock`` or reads what it guards (the kernel's users are
all in process context; the pvclock seqcount's readers run there or in the scheduler's preempt
notifier, which is why the lock is raw). So the irqs-off half has no mutant; the raw kind has.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from kvmlock import irq, runtime
from kvmlock.kvm.mutants import mutant
from kvmlock.sync import Atomic64, guarded_by, peek

__all__ = ["KvmClock", "TscSync", "VcpuTsc"]

NSEC_PER_SEC = 1_000_000_000
_U64 = (1 << 64) - 1

TSC_WRITE_WALKS_VM_LIST = mutant(
    "tsc_write_walks_vm_list", removes="(adds) kvm_lock taken under the raw tsc_write_lock by "
    "a TSC write",
    breaks="kvm_lock is taken outside tsc_write_lock (the Hyper-V clock notifier's order)")
TSC_WITHOUT_LOCK = mutant(
    "tsc_without_lock", removes="tsc_write_lock around matching a TSC write to a generation "
    "and around KVM_SET_CLOCK's pvclock update",
    breaks="kvm->arch.tsc_write_lock makes the TSC generation's read-decide-write one step, "
           "and guards the VM's clock offset")


SET_CLOCK_HV_REQUEST_UNDER_TSC_LOCK = mutant(
    "set_clock_hv_request_under_tsc_lock", removes="(adds) KVM_SET_CLOCK asking Hyper-V to "
    "rewrite its TSC page (hv_lock, a mutex) after the pvclock update began, under the raw "
    "tsc_write_lock with interrupts off, instead of before it",
    breaks="kvm->arch.tsc_write_lock is a leaf, raw and held with interrupts off: nothing that "
           "sleeps is taken inside it")

HV_TSC_PAGE_MARKED_AFTER_CLOCK_UPDATE = mutant(
    "hv_tsc_page_marked_after_clock_update", removes="the order of a clock change's request "
    "for a Hyper-V TSC page rewrite (kvm_hv_request_tsc_page_update): made after the pvclock "
    "update ended, when the vCPUs were already asked for a clock update, instead of before "
    "it began",
    breaks="the reference TSC page is marked host-changed before the clock-update request "
           "that rewrites it is raised: a vCPU serving the request first finds the page "
           "'set', skips it, and the guest keeps reading the old clock")

CLOCK_REQUEST_BEFORE_UPDATE = mutant(
    "clock_request_before_update", removes="the order of a pvclock update's end: "
    "KVM_REQ_CLOCK_UPDATE raised on every vCPU before the clock is changed, not after",
    breaks="a clock update request is raised only once the new clock can be read: a vCPU "
           "serving one raised earlier reads the old clock, consumes the request and keeps "
           "a stale pvclock page")
CLOCK_REQUEST_CLEARED_AFTER_SERVICE = mutant(
    "clock_request_cleared_after_service", removes="the clearing of a vCPU's "
    "KVM_REQ_CLOCK_UPDATE before it is served (kvm_check_request's test-and-clear): it is "
    "tested, served, and cleared afterwards",
    breaks="a clock update raised while the vCPU serves an earlier one is kept: the request "
           "is consumed before the clock is read, so a later KVM_SET_CLOCK always leaves one "
           "behind")
CLOCK_REQUEST_LOAD_STORE = mutant(
    "clock_request_load_store", removes="the atomic set_bit raising KVM_REQ_CLOCK_UPDATE "
    "(kvm_make_request): the request word is loaded, the bit or-ed in, and the word stored",
    breaks="a vCPU's request word is changed only by atomic bit operations: another pvclock "
           "update's request, or the vCPU's own test-and-clear, landing between the load and "
           "the store is erased, and the vCPU keeps a stale pvclock page")


@dataclass
class VcpuTsc:
    offset: int = 0
    generation: int = -1


class TscSync:
    """The TSC bookkeeping of one VM (``kvm_arch``'s last/cur TSC fields)."""

    last_tsc_write = guarded_by("lock")
    last_tsc_nsec = guarded_by("lock")
    cur_generation = guarded_by("lock")
    cur_offset = guarded_by("lock")
    #: kvmclock_offset: the VM's clock minus the host's. Written only inside a pvclock update
    #: (tsc_write_lock held, the pvclock seqcount's write side open); read with no lock by a
    #: vCPU's clock update, as kvm_guest_time_update does (after its seqcount loop, which
    #: covers only the master-clock snapshot). The reader needs no lock because the update
    #: raises KVM_REQ_CLOCK_UPDATE on every vCPU *after* the write: a vCPU that read the old
    #: value has a request again and reads once more before it enters the guest. The read
    #: races the write on purpose, so both are visible steps (points made where they are
    #: accessed, so the race audit sees each access as its step's payload).
    kvmclock_offset = guarded_by("lock", writes_only=True)

    def __init__(self, vm: Any, *, tsc_khz: int = 1_000_000, locked: bool = True) -> None:
        lock = getattr(vm, "tsc_write_lock", None)
        if lock is None:
            raise TypeError(f"TscSync needs a VM with a tsc_write_lock, got {vm!r}")
        if not isinstance(tsc_khz, int) or tsc_khz <= 0:
            raise ValueError(f"tsc_khz must be a positive integer, got {tsc_khz!r}")
        self.vm = vm
        self.lock = lock
        self.tsc_khz = tsc_khz
        self.locked = locked
        self._rt = runtime.active()
        self.last_tsc_write = 0
        self.last_tsc_nsec = 0
        self.cur_generation = 0
        self.cur_offset = 0
        self.kvmclock_offset = 0
        self.vcpus: dict[int, VcpuTsc] = {}
        #: the clock offset each vCPU's pvclock page was last written from (by its own
        #: kvm_guest_time_update, under its vcpu->mutex)
        self.pvclock: dict[int, int] = {}
        #: KVM_REQ_CLOCK_UPDATE, one bit per vCPU id
        self.clock_update = Atomic64(0, name="KVM_REQ_CLOCK_UPDATE")

    def _ticks(self, ns: int) -> int:
        return ns * self.tsc_khz // 1_000_000

    def write(self, vcpu: Any, data: int, now_ns: int) -> VcpuTsc:
        """Userspace sets ``vcpu``'s TSC to ``data`` at host time ``now_ns`` (vcpu->mutex held)."""
        if not isinstance(data, int) or data < 0 or not isinstance(now_ns, int) or now_ns < 0:
            raise ValueError(f"TSC write needs non-negative integers, got data={data!r} "
                             f"now_ns={now_ns!r}")
        vcpu.mutex.assert_held()
        if self.locked and TSC_WITHOUT_LOCK not in self.vm.hazards:
            with irq.local_irq_save(), self.lock:  # raw_spin_lock_irqsave
                machine = getattr(self.vm, "machine", None)
                if self.vm.hazards.tsc_write_walks_vm_list and machine is not None:
                    with machine.kvm_lock:  # broken: kvm_lock is outside tsc_write_lock
                        pass
                return self._synchronize(vcpu.id, data, now_ns)
        return self._synchronize(vcpu.id, data, now_ns)

    def set_clock(self, clock_ns: int, now_ns: int, hv: Any = None) -> None:
        """``KVM_SET_CLOCK``: the VM's clock reads ``clock_ns`` at host time ``now_ns``.

        As ``kvm_vm_ioctl_set_clock`` does it: first ask Hyper-V (``hv``, if the VM has it) to
        rewrite its reference TSC page (under ``hv_lock``, a mutex), then begin the pvclock
        update -- ``tsc_write_lock`` with interrupts off, which also stops guest entries --
        move the clock inside it, and end it by asking every vCPU for a clock update.
        """
        if not isinstance(clock_ns, int) or not isinstance(now_ns, int) or now_ns < 0:
            raise ValueError(f"KVM_SET_CLOCK needs integers, got clock_ns={clock_ns!r} "
                             f"now_ns={now_ns!r}")
        self._pvclock_update(hv, clock_ns - now_ns)

    def update_masterclock(self, hv: Any = None) -> None:
        """``kvm_update_masterclock`` (a vCPU serving KVM_REQ_MASTERCLOCK_UPDATE): the same
        update as KVM_SET_CLOCK's, the clock left where it is."""
        self._pvclock_update(hv, None)

    def _pvclock_update(self, hv: Any, offset: int | None) -> None:
        # The Hyper-V page is marked host-changed *before* the update: the clock-update
        # requests raised at its end are what rewrites the page, and the vCPU serving one
        # rewrites it only if it is marked by then (kvm_hv_setup_tsc_page).
        late = SET_CLOCK_HV_REQUEST_UNDER_TSC_LOCK in self.vm.hazards
        after = HV_TSC_PAGE_MARKED_AFTER_CLOCK_UPDATE in self.vm.hazards
        if hv is not None and not late and not after:
            hv.request_tsc_page_update()
        locked = self.locked and TSC_WITHOUT_LOCK not in self.vm.hazards
        early = CLOCK_REQUEST_BEFORE_UPDATE in self.vm.hazards
        if early:
            self._request_clock_updates()  # broken: served now, they read the old clock
        with irq.local_irq_save(), self.lock if locked else contextlib.nullcontext():
            # (that is __kvm_start_pvclock_update)
            if hv is not None and late:
                hv.request_tsc_page_update()  # broken: a mutex under a raw lock, irqs off
            if offset is not None:
                self._rt.point(self, "write kvmclock_offset", True)
                self.kvmclock_offset = offset
        if not early:
            self._request_clock_updates()
        if hv is not None and after:
            hv.request_tsc_page_update()  # broken: a vCPU may have served the request already

    def _request_clock_updates(self) -> None:
        """``kvm_end_pvclock_update``: KVM_REQ_CLOCK_UPDATE to every vCPU (an atomic bit each)."""
        if CLOCK_REQUEST_LOAD_STORE in self.vm.hazards:
            for vcpu in getattr(self.vm, "vcpus", ()):  # broken: not one atomic step
                self.clock_update.store(self.clock_update.load() | 1 << vcpu.id)
            return
        for vcpu in getattr(self.vm, "vcpus", ()):
            self.clock_update.fetch_or(1 << vcpu.id)

    def serve_clock_requests(self, vcpu: Any, hv: Any = None) -> None:
        """The clock requests ``vcpu`` serves on its way into the guest (``vcpu_enter_guest``,
        vcpu->mutex held): a master-clock update first (it raises clock updates), then its
        own clock update (``kvm_guest_time_update``), which rewrites the Hyper-V reference TSC
        page from the VM's clock if the page is marked changed."""
        vcpu.mutex.assert_held()
        if hv is not None and hv.masterclock_requests[vcpu.id]:  # only vcpu itself sets it
            hv.masterclock_requests[vcpu.id] = False
            self.update_masterclock(hv)
        bit = 1 << vcpu.id
        late = CLOCK_REQUEST_CLEARED_AFTER_SERVICE in self.vm.hazards
        if late:
            pending = self.clock_update.load() & bit
        else:
            pending = self.clock_update.fetch_and(_U64 ^ bit) & bit
        if not pending:
            return
        self._rt.point(self, "read kvmclock_offset", False)
        offset = self.kvmclock_offset  # no lock, as kvm_guest_time_update (see the field)
        self.pvclock[vcpu.id] = offset
        if hv is not None:
            hv.setup_tsc_page(offset)
        if late:
            self.clock_update.fetch_and(_U64 ^ bit)  # broken: also erases one raised meanwhile

    def _synchronize(self, vcpu_id: int, data: int, now_ns: int) -> VcpuTsc:
        # Read everything, then write everything: the two halves are one step only under the
        # lock (in C the generation bump is a load, an add and a store, too).
        offset = data - self._ticks(now_ns)
        self._rt.point(self, "read last_tsc", False)
        gen, cur_offset = self.cur_generation, self.cur_offset
        expected = self.last_tsc_write + self._ticks(now_ns - self.last_tsc_nsec)
        synchronizing = gen > 0 and (data == 0 or abs(data - expected) < self._ticks(NSEC_PER_SEC))
        self._rt.point(self, "write last_tsc", True)
        if synchronizing:
            offset = cur_offset
        else:
            gen += 1
            self.cur_generation = gen
            self.cur_offset = offset
        self.last_tsc_write = data
        self.last_tsc_nsec = now_ns
        state = self.vcpus.setdefault(vcpu_id, VcpuTsc())
        state.offset = offset
        state.generation = gen
        return state

    def check_pvclocks(self) -> None:
        """Invariant, once every vCPU has served its clock requests: each vCPU's pvclock page
        was written from the VM's current clock."""
        pending = self.clock_update.load()
        offset = peek(self, "kvmclock_offset")
        stale = {v.id: got for v in self.vm.vcpus if (got := self.pvclock.get(v.id)) != offset}
        assert not stale, (f"vCPU pvclock page(s) written from a stale clock: {stale}, the VM's "
                           f"clock offset is {offset}, pending clock updates {pending:#x}")

    def check(self) -> None:
        """Invariant: vCPUs of one generation share one offset (their TSCs tick together)."""
        by_gen: dict[int, set[int]] = {}
        for st in self.vcpus.values():
            by_gen.setdefault(st.generation, set()).add(st.offset)
        split = {g: sorted(o) for g, o in by_gen.items() if len(o) > 1}
        assert not split, f"vCPUs of one TSC generation have different offsets: {split}"


GTOD_NOTIFIER_TAKES_KVM_LOCK = mutant(
    "gtod_notifier_takes_kvm_lock", removes="the deferral of the timekeeping notifier's "
    "vm_list walk to a work item (the notifier takes kvm_lock itself)",
    breaks="the timekeeping notifier runs in the timer tick, where kvm_lock (a mutex) may not "
           "be taken")

KVMCLOCK_WORK_CLEARS_PENDING_LATE = mutant(
    "kvmclock_work_clears_pending_late", removes="the clearing of the work's pending flag "
    "before the vm_list walk (the workqueue does it before calling the work function); "
    "cleared after the walk instead",
    breaks="a clock update the timer tick queues while the work walks vm_list is not lost")


class KvmClock:
    """The host-clock notifiers KVM registers, in the contexts the kernel calls them in.

    * ``pvclock_gtod_notify``: the timekeeping core calls it on every clock update -- from the
      timer tick, a hard interrupt, with its own raw lock (``tk_core.lock``) held. It may not
      take ``kvm_lock`` (a mutex) there, so it only queues work (:meth:`tick`); the work
      (:meth:`run_work`) walks ``vm_list`` under ``kvm_lock`` in process context and asks every
      vCPU for a master-clock update.
    * ``kvmclock_cpufreq_notifier``: cpufreq's transition notifier runs in process context
      (an SRCU notifier chain, with ``cpus_read_lock`` held) and walks ``vm_list`` under
      ``kvm_lock`` (:meth:`Machine.cpufreq_notifier`); the new frequency itself reaches the CPU
      by an IPI, ``tsc_khz_changed``, which runs there as a hard interrupt and takes no lock.
    """

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.timekeeper_lock = machine.timekeeper_lock
        self.work_pending = Atomic64(0, name="pvclock_gtod_work")
        self.cpu_tsc_khz = [Atomic64(0, name=f"cpu_tsc_khz[{c}]")
                            for c in range(len(machine.cpus))]
        self.updates: dict[int, int] = {}  # id(VM) -> master-clock update requests made

    def tick(self) -> None:
        """A timer tick updates the clock: the notifier runs in hard-IRQ context."""
        with irq.hardirq(), self.timekeeper_lock:
            self.pvclock_gtod_notify()

    def pvclock_gtod_notify(self) -> None:
        if GTOD_NOTIFIER_TAKES_KVM_LOCK in self.machine.hazards:
            with self.machine.kvm_lock:  # a mutex in a hard interrupt
                self._request_updates()
            return
        self.work_pending.store(1)  # queue_work(): the walk needs kvm_lock, so it is deferred

    def run_work(self) -> None:
        """The deferred work (a kworker, process context)."""
        if KVMCLOCK_WORK_CLEARS_PENDING_LATE in self.machine.hazards:
            if self.work_pending.load():
                with self.machine.kvm_lock:
                    self._request_updates()
                self.work_pending.store(0)  # broken: a tick queued during the walk is lost
            return
        # process_one_work clears PENDING before the function runs: a tick from now on
        # queues the work again, and that run sees every VM created before it
        if self.work_pending.xchg(0):
            with self.machine.kvm_lock:
                self._request_updates()

    def _request_updates(self) -> None:
        for vm in self.machine.vm_list:
            self.updates[id(vm)] = self.updates.get(id(vm), 0) + 1

    def cpufreq_change(self, cpu: int, khz: int) -> int:
        """A frequency transition on ``cpu``: the notifier, then the IPI to that CPU."""
        self.machine.percpu(cpu)  # validates the CPU number
        told = self.machine.cpufreq_notifier()
        with irq.hardirq():  # smp_call_function_single(cpu, tsc_khz_changed)
            self.cpu_tsc_khz[cpu].store(khz)
        return told
