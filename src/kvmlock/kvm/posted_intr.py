"""Posted interrupts and the wakeup of blocked vCPUs (VT-d / VMX posted interrupts).

A device interrupt for a guest is *posted*: the IOMMU sets the vector's bit in the vCPU's
posted-interrupt descriptor (PIR), sets the descriptor's ON ("outstanding notification") bit and,
if ON was clear, sends the notification vector named in the descriptor to the CPU the vCPU was
last on. While the vCPU runs, that vector makes the CPU inject the interrupt directly. While the
vCPU is *blocked* (halted, scheduled out), there is nobody to inject it: so before blocking the
vCPU puts itself on its CPU's ``wakeup_vcpus_on_cpu`` list (under the per-CPU raw spinlock
``wakeup_vcpus_on_cpu_lock``) and switches the notification vector to the *wakeup* vector, whose
handler walks that list and wakes every vCPU with ON set.

Blocking is two steps, as in the kernel. First ``kvm_vcpu_block`` looks for a pending
interrupt (ON set) and does not sleep if there is one. Only then, on its way off the CPU
(``vmx_vcpu_pi_put``), does the vCPU join the wakeup list and switch the notification vector to
the wakeup vector. An interrupt posted between that first look and the switch is notified with
the *old* vector and reaches nobody -- so the switch must re-check ON *in the value it
exchanged* (one atomic step with the switch), and if ON is set, send itself the wakeup vector
(a self-IPI), whose handler finds the vCPU on the list and wakes it. Without that re-check, or
with ON read apart from the exchange, the vCPU sleeps for ever with an interrupt pending.

The lock is a leaf and a raw spinlock: the handler runs in hard interrupt context on the CPU the
vector was sent to (:func:`send_wakeup_vector`; given the task running there, as an interrupt
of that task), so everybody else takes it with interrupts off
(``raw_spin_lock_irqsave``; in this model ``with lock.irqsave():``, the lock's own form) --
or the handler could interrupt a holder on its own CPU and spin forever.
It is per CPU because a vCPU is listed on the CPU it blocked on, and may wake up and run on
another: it then takes itself off the *old* CPU's list (``vmx_vcpu_pi_load``), and blocks later
on the new one's (``block(resume_on=...)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kvmlock import irq, runtime
from kvmlock.kvm.machine import Machine, PerCpu
from kvmlock.kvm.mutants import mutant, unless
from kvmlock.sync import Atomic64, RCUWait, data_racy

__all__ = ["PostedVcpu", "post_interrupt", "send_wakeup_vector", "wakeup_handler"]

#: descriptor control word: bit 0 ON, bit 1 SN (suppress), bit 8 set = wakeup vector selected
PI_ON = 1 << 0
PI_SN = 1 << 1
PI_NV_WAKEUP = 1 << 8

PI_NO_ON_RECHECK = mutant(
    "pi_no_on_recheck", removes="the re-check of ON after switching to the wakeup vector "
    "(and its self-IPI)",
    breaks="an interrupt posted before the switch to the wakeup vector still wakes the vCPU")
PI_ON_READ_APART = mutant(
    "pi_on_read_apart", removes="reading ON in the value the vector switch exchanged (read "
    "before the cmpxchg instead)",
    breaks="ON is re-checked atomically with the switch to the wakeup vector")
PI_VECTOR_PLAIN_STORE = mutant(
    "pi_vector_plain_store", removes="the cmpxchg loop that switches the notification vector "
    "(load, then store)",
    breaks="the IOMMU sets ON at any time: switching the vector must not erase it")
PI_PIR_BEFORE_ON = mutant(
    "pi_pir_before_on", removes="clearing ON before the vCPU takes the PIR (the PIR taken "
    "first, ON cleared after)",
    breaks="an interrupt posted while the vCPU takes the PIR leaves ON set, so it is noticed")
PI_LIST_AFTER_VECTOR = mutant(
    "pi_list_after_vector", removes="the order of a blocking vCPU's two steps: it switches to "
    "the wakeup vector first and joins the CPU's wakeup list after",
    breaks="an interrupt posted once the wakeup vector is selected finds the vCPU on the "
           "list its handler walks: the vCPU joins the list before it switches the vector")
PI_ON_BEFORE_PIR = mutant(
    "pi_on_before_pir", removes="the order of a posting's two steps: ON set before the "
    "vector's PIR bit",
    breaks="a vCPU that finds ON set finds the vector in the PIR: the vector is posted "
           "first, then ON, so the vCPU's clear-ON-then-take-PIR cannot strand it")
PI_HANDLER_NO_WAKE = mutant(
    "pi_handler_no_wake", removes="the wake-up of a listed vCPU with ON set by the wakeup "
    "handler (kvm_vcpu_wake_up)",
    breaks="a posted interrupt always wakes the halted vCPU")
PI_HANDLER_WAKES_BEFORE_KICK = mutant(
    "pi_handler_wakes_before_kick", removes="the order of the wakeup handler's two steps: "
    "the vCPU is woken before the state its wait tests is changed (the change comes after "
    "rcuwait_wake_up)",
    breaks="a waker changes what the sleeper tests first and wakes it second: woken early, "
           "the vCPU re-tests, finds nothing and sleeps with no wake-up left to come")
PI_LIST_WITHOUT_LOCK = mutant(
    "pi_list_without_lock", removes="wakeup_vcpus_on_cpu_lock around the per-CPU wakeup list",
    breaks="wakeup_vcpus_on_cpu is changed and walked only under wakeup_vcpus_on_cpu_lock")
PI_LIST_IRQS_ON = mutant(
    "pi_list_irqs_on", removes="interrupts disabled around the vCPU's wakeup-list updates "
    "(raw_spin_lock_irqsave made raw_spin_lock)",
    breaks="the wakeup handler takes wakeup_vcpus_on_cpu_lock in hard-IRQ context, so it is "
           "only ever held with interrupts off")
PI_LOAD_NESTS_WAKEUP_LOCKS = mutant(
    "pi_load_nests_wakeup_locks", removes="(adds) the new CPU's wakeup_vcpus_on_cpu_lock held "
    "while a vCPU that moved takes itself off the old CPU's list (to move the entry in one go)",
    breaks="wakeup_vcpus_on_cpu_lock is a leaf: two vCPUs moving between two CPUs in opposite "
           "directions would each hold one CPU's lock and spin on the other's")
PI_PIR_LOAD_STORE = mutant(
    "pi_pir_load_store", removes="the atomic exchange that takes the PIR (a load, then a "
    "store of 0)",
    breaks="posters set PIR bits at any time without a lock: the vCPU takes the PIR with "
           "one exchange, or a bit set between its load and its clear is erased")
PI_ON_LOAD_STORE = mutant(
    "pi_on_load_store", removes="the atomic test-and-set of ON in a posting (a load of the "
    "control word, then a store of it with ON set)",
    breaks="the blocking vCPU switches the notification vector in the same word with a "
           "cmpxchg: a posting sets ON with one atomic step, or its store puts back the old "
           "vector and the wake-up is sent nowhere")
PI_PIR_SET_LOAD_STORE = mutant(
    "pi_pir_set_load_store", removes="the atomic test-and-set of a posted vector's PIR bit "
    "(a load of the PIR, then a store of it with the bit set)",
    breaks="several posters (the IOMMU, other vCPUs' IPIs) set bits of one PIR without a "
           "lock: each sets its bit with one atomic step, or a bit another poster set between "
           "its load and its store is erased and that vector is lost")
PI_HANDLER_WITHOUT_LOCK = mutant(
    "pi_handler_without_lock", removes="wakeup_vcpus_on_cpu_lock in the wakeup handler",
    breaks="wakeup_vcpus_on_cpu is walked only under wakeup_vcpus_on_cpu_lock")


def _list_update(pc: PerCpu, change: Any) -> None:
    """Replace the CPU's wakeup list after reading it: two visible steps, as list_add's stores
    are, so an updater without the lock can lose another's entry."""
    rt = runtime.active()
    rt.point(pc, "read wakeup list", False)
    new = change(list(pc.wakeup_vcpus_on_cpu))
    rt.point(pc, "write wakeup list", True)
    pc.wakeup_vcpus_on_cpu = new


class _VcpuWait(RCUWait):
    """The halted vCPU's ``vcpu->wait``: a report of a sleeper nobody woke says which posted
    vectors it slept through (its repr is what the explorer prints for the sleeper)."""

    __slots__ = ("_pv",)

    def __init__(self, pv: PostedVcpu) -> None:
        super().__init__("vcpu->wait")
        self._pv = pv

    def __repr__(self) -> str:
        pending = self._pv.undelivered(pending_ok=False)
        if pending and self.has_sleeper() and not self._pv.control.peek() & PI_NV_WAKEUP:
            pending.append("the descriptor names the posted-interrupt vector although the "
                           "vCPU sleeps: its switch to the wakeup vector was undone")
        return super().__repr__() + (f" ({'; '.join(pending)})" if pending else "")


class PostedVcpu:
    """A vCPU's posted-interrupt side: its descriptor, its CPU and its sleep.

    End-of-run invariant (:meth:`check_delivered`, registered with the machine so every
    scenario checks it once its tasks have joined): every vector posted to the vCPU was
    delivered, or is still pending in the PIR with ON set, so the vCPU's next entry takes it.
    """

    #: the vectors posted to this vCPU (by the posters; read once every task has joined)
    posted = data_racy(
        "the model's own record of what was posted, no kernel field: every poster adds to it "
        "without a lock (two posters may at once), and only the end-of-run check reads it, "
        "after every task has joined")

    def __init__(self, machine: Machine, vcpu: Any, cpu: int = 0) -> None:
        if not isinstance(machine, Machine):
            raise TypeError(f"PostedVcpu needs a Machine, got {type(machine).__name__}")
        machine.percpu(cpu)  # validates the CPU number
        self.machine = machine
        self.vcpu = vcpu
        self.cpu = cpu
        self.control = Atomic64(0, name="pi_desc.control")
        self.pir = Atomic64(0, name="pi_desc.pir")
        self.wait: RCUWait = _VcpuWait(self)
        self.kicks = 0  # wakeups delivered by the handler
        #: the vectors taken from the PIR into the virtual APIC (the IRR)
        self.delivered: set[int] = set()
        self.posted: set[int] = set()
        machine.quiet_checks.append(self.check_delivered)

    def __repr__(self) -> str:
        return f"<PostedVcpu {getattr(self.vcpu, 'id', self.vcpu)} cpu{self.cpu}>"

    def _set_vector(self, wakeup: bool) -> int:
        """Switch the notification vector; returns the value written (ON as it was then)."""
        hz = self.machine.hazards
        while True:
            old = self.control.load()
            new = (old | PI_NV_WAKEUP) if wakeup else (old & ~PI_NV_WAKEUP)
            if PI_VECTOR_PLAIN_STORE in hz:
                self.control.store(new)
                return new
            if self.control.cmpxchg(old, new) == old:
                return new

    def block(self, *, resume_on: int | None = None) -> None:
        """Halt until an interrupt is pending, then run again (on CPU ``resume_on``, default
        the same one) and take the interrupts."""
        hz = self.machine.hazards
        pc = self.machine.cpus[self.cpu]
        if resume_on is not None:
            self.machine.percpu(resume_on)  # validates the CPU number
        kicks = self.kicks  # (a wake-up of an earlier block does not end this one)
        # kvm_vcpu_block's check: with an interrupt already pending the vCPU does not sleep
        if self.control.load() & PI_ON:
            if resume_on is not None:
                self.cpu = resume_on
            self._deliver()
            return
        # vmx_vcpu_pi_put (pi_enable_wakeup_handler): join the wakeup list, switch to the
        # wakeup vector, re-check ON in the value the switch exchanged
        late = PI_LIST_AFTER_VECTOR in hz
        if not late:
            self._join_list(pc)
        early = self.control.load() if PI_ON_READ_APART in hz else None
        new = self._set_vector(True)
        on = (early if early is not None else new) & PI_ON
        if late:
            self._join_list(pc)  # broken: a wakeup vector sent meanwhile found no vCPU
        if on and PI_NO_ON_RECHECK not in hz:
            send_wakeup_vector(self.machine, self.cpu)  # the self-IPI
        # schedule(): until the handler wakes us
        self.wait.wait(lambda: self.kicks > kicks, reads=self)
        # vmx_vcpu_pi_load, wherever the vCPU runs next: off the list of the CPU it blocked on
        moved = resume_on is not None and resume_on != self.cpu
        if moved and PI_LOAD_NESTS_WAKEUP_LOCKS in hz:  # broken: the new CPU's lock too
            with self._irqs_off(), self.machine.cpus[resume_on].wakeup_lock, pc.wakeup_lock:
                _list_update(pc, lambda lst: [v for v in lst if v is not self])
        else:
            with self._list_locked(pc):
                _list_update(pc, lambda lst: [v for v in lst if v is not self])
        if resume_on is not None:
            self.cpu = resume_on
        self._set_vector(False)
        self._deliver()

    def _join_list(self, pc: PerCpu) -> None:
        """Put this vCPU on ``pc``'s wakeup list, where the wakeup handler looks for it."""
        with self._list_locked(pc):
            _list_update(pc, lambda lst: [*lst, self])

    def enter_guest(self) -> None:
        """VM entry of a vCPU that runs rather than halts (``vmx_sync_pir_to_irr``): with ON
        set, clear it and take the PIR; with ON clear no posting is outstanding."""
        if self.control.load() & PI_ON:
            self._deliver()

    def undelivered(self, *, pending_ok: bool = True) -> list[str]:
        """The posted vectors the vCPU has not got, each with what became of it. A vector
        pending in the PIR with ON set is on its way (the next entry takes it) and is left out
        when ``pending_ok``."""
        pir, on = self.pir.peek(), self.control.peek() & PI_ON
        name = f"vcpu{getattr(self.vcpu, 'id', self.vcpu)}"
        out = []
        for v in sorted(self.posted - self.delivered):
            if not pir >> v & 1:
                out.append(f"vector {v} posted to {name} is lost: neither delivered nor "
                           f"pending in its PIR (a PIR bit was erased after it was set)")
            elif not on:
                out.append(f"vector {v} posted to {name} is stranded in its PIR with ON "
                           f"clear: no notification is on its way and no entry looks")
            elif not pending_ok:
                out.append(f"vector {v} posted to {name} is pending in its PIR with ON set, "
                           f"but the wake-up the posting owed the halted vCPU never came")
        return out

    def check_delivered(self) -> None:
        """Assert the end-of-run invariant: no posted vector lost or stranded."""
        lost = self.undelivered()
        assert not lost, "; ".join(lost)

    def _irqs_off(self) -> Any:
        """raw_spin_lock_irqsave's first half: interrupts off on this CPU."""
        if PI_LIST_IRQS_ON in self.machine.hazards:
            return contextlib.nullcontext()
        return irq.local_irq_save()

    def _list_locked(self, pc: PerCpu) -> Any:
        """``raw_spin_lock_irqsave(&wakeup_vcpus_on_cpu_lock)`` through the lock's own form,
        whose unlock lets interrupts back on only once the lock is released."""
        hz = self.machine.hazards
        if PI_LIST_WITHOUT_LOCK in hz:
            return self._irqs_off()
        if PI_LIST_IRQS_ON in hz:
            return pc.wakeup_lock
        lock = pc.wakeup_lock
        if not hasattr(lock, "irqsave"):  # a lock kind without the form (a mutex)
            return _both(self._irqs_off(), lock)
        return lock.irqsave()

    def _deliver(self) -> None:
        """Back in the guest: the CPU clears ON, then takes the PIR into the virtual APIC.

        In that order (vmx_sync_pir_to_irr): a poster sets its PIR bit, then ON, and notifies
        only if ON was clear. A bit set after the PIR was taken then finds ON clear (and
        notifies) or sets it again for the next pending check. Taking the PIR first, a bit
        set in between finds ON still set, sends nothing, and is stranded when ON is cleared:
        pending in the PIR with nothing pointing at it."""
        if PI_PIR_BEFORE_ON in self.machine.hazards:
            bits = self._take_pir()
            self.control.fetch_and(~PI_ON & ((1 << 64) - 1))
        else:
            self.control.fetch_and(~PI_ON & ((1 << 64) - 1))
            bits = self._take_pir()
        self.delivered |= {v for v in range(64) if bits >> v & 1}

    def _take_pir(self) -> int:
        """Take every pending vector out of the PIR (``xchg``; pi_harvest_pir)."""
        if PI_PIR_LOAD_STORE in self.machine.hazards:
            bits = self.pir.load()
            self.pir.store(0)  # broken: a bit posted since the load is erased
            return bits
        return self.pir.xchg(0)


@contextlib.contextmanager
def _both(first: Any, second: Any) -> Iterator[None]:
    with first, second:
        yield


def wakeup_handler(machine: Machine, cpu: int) -> int:
    """The wakeup vector's handler on ``cpu``: wake every listed vCPU with ON set. It runs in
    hard-IRQ context (see :func:`send_wakeup_vector`), so it takes the raw lock plainly."""
    pc = machine.percpu(cpu)
    woken = 0
    with unless(PI_HANDLER_WITHOUT_LOCK, machine.hazards, pc.wakeup_lock):
        runtime.active().point(pc, "read wakeup list", False)
        for pv in list(pc.wakeup_vcpus_on_cpu):
            if pv.control.load() & PI_ON:
                late = PI_HANDLER_WAKES_BEFORE_KICK in machine.hazards
                if late and PI_HANDLER_NO_WAKE not in machine.hazards:
                    pv.wait.wake_up()  # broken: the vCPU may re-check before the kick lands
                runtime.active().point(pv, "kick", True)
                pv.kicks += 1
                if not late and PI_HANDLER_NO_WAKE not in machine.hazards:
                    pv.wait.wake_up()
                woken += 1
    return woken


def post_interrupt(pv: PostedVcpu, vector: int, *, running: Any = None) -> runtime.Handle | None:
    """The IOMMU posts ``vector`` to ``pv``; notifies its CPU when ON was clear. ``running``:
    see :func:`send_wakeup_vector` (the handle of the wakeup interrupt, if one was sent as
    an interrupt of that task, is returned)."""
    if not isinstance(vector, int) or not 0 <= vector < 64:
        raise ValueError(f"posted vector must be in 0..63 in this model, got {vector!r}")
    pv.posted.add(vector)
    if PI_ON_BEFORE_PIR in pv.machine.hazards:
        old = pv.control.fetch_or(PI_ON)
        pv.pir.fetch_or(1 << vector)  # broken: the vCPU may have consumed ON in between
    else:
        _set_pir(pv, vector)
        old = _set_on(pv)
    if old & (PI_ON | PI_SN):
        return None  # a notification is already on its way, or notifications are suppressed
    if old & PI_NV_WAKEUP:
        if running is not None:
            return send_wakeup_vector(pv.machine, pv.cpu, running=running)
        send_wakeup_vector(pv.machine, pv.cpu)
    # else: the posted-interrupt vector reaches a CPU where the vCPU is not running: the
    # interrupt stays in the PIR, to be found by the vCPU's own check for pending work.
    return None


def _set_pir(pv: PostedVcpu, vector: int) -> None:
    """``pi_test_and_set_pir``: set the vector's bit in one atomic step."""
    _fetch_or(pv.pir, 1 << vector, PI_PIR_SET_LOAD_STORE in pv.machine.hazards)


def _set_on(pv: PostedVcpu) -> int:
    """``pi_test_and_set_on``: set ON in one atomic step; the control word as it was."""
    return _fetch_or(pv.control, PI_ON, PI_ON_LOAD_STORE in pv.machine.hazards)


def _fetch_or(word: Atomic64, bits: int, split: bool) -> int:
    """One atomic OR into a descriptor word, or (``split``, a mutant) a load and a store,
    between which another writer's change to the word is undone."""
    if split:
        old = word.load()
        word.store(old | bits)  # broken: a change made since the load is undone
        return old
    return word.fetch_or(bits)


def send_wakeup_vector(machine: Machine, cpu: int, *, running: Any = None) -> Any:
    """The wakeup vector arrives at ``cpu``: :func:`wakeup_handler` runs there as a hard
    interrupt. By default the caller stands for that CPU while it does, and the number of
    vCPUs woken is returned. With ``running``, the ``kvmlock.spawn`` handle of the task that
    runs on that CPU, it is an interrupt of that task instead (``kvmlock.irq.inject``): it
    fires whenever that task has interrupts on -- under the explorer, at a moment the
    exploration chooses -- and its handle is returned; a task of that CPU changing the
    wakeup list with interrupts on can then be interrupted by it, and the handler spins on
    the lock its own CPU holds."""
    if running is not None:
        return irq.inject(wakeup_handler, machine, cpu, cpu=running,
                          name=f"wakeup vector cpu{cpu}")
    with irq.hardirq():
        return wakeup_handler(machine, cpu)
