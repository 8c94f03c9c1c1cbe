"""Locks taken from interrupt or non-blockable context, and what their kind must therefore be.

* ``wakeup_vcpus_on_cpu_lock`` is taken by the posted-interrupt wakeup handler, a hard
  interrupt on the CPU the vector was sent to. Everybody else takes it with interrupts off;
  it is a raw spinlock (a hard interrupt may only spin, also on PREEMPT_RT), and per CPU,
  because a vCPU that blocked on one CPU can resume on another and leave the first one's list.
* ``tsc_write_lock`` is taken with interrupts off (``raw_spin_lock_irqsave`` in the TSC write,
  ``raw_spin_lock_irq`` when a pvclock update begins) so that the host TSC read and the clock
  read the offset is computed from are not split by an interrupt. With interrupts off only a
  spinning lock may be taken, so it is raw -- a spinlock_t sleeps on PREEMPT_RT, a mutex
  always may (mutants ``tsc_write_lock_spinlock_t``, ``tsc_write_lock_mutex``). Dropping the
  irqsave is a loss of precision, not a lock bug, and is not a mutant, because nothing in
  interrupt context takes the lock or reads what it protects: the hrtimer callbacks KVM arms
  (the Xen timer, Hyper-V's synthetic timers) only mark a timer pending and kick the vCPU;
  the timekeeping notifier, in the timer tick, writes the host's own clock copy under its own
  seqcount and defers the walk of the VMs to a work item; the Hyper-V clock notifier runs
  from a work item; and every reader of the pvclock seqcount the lock's holder writes
  (``kvm_guest_time_update``, ``get_kvmclock``, ``kvm_get_wall_clock_epoch``) runs in process
  context with preemption off. An interrupt arriving inside the section therefore cannot
  spin on the lock nor on the seqcount, and no model of it could fail.
* ``tk_core.lock``, the timekeeper's raw lock, is held by the timer tick around the
  timekeeping notifier; made a mutex or a spinlock_t it is caught there. Its process-context
  takers (settimeofday and the like) are not in the model, so it has no irqsave to drop.
* The MMU notifier's invalidations can be non-blockable (the OOM reaper): every lock on that
  path spins, ``mn_invalidate_lock`` included.
* The host-clock notifiers: the timekeeping one runs in the timer tick (hard interrupt, under
  the timekeeper's raw lock) and defers its walk of ``vm_list`` to a work item, because that
  walk takes ``kvm_lock``, a mutex; the cpufreq one runs in process context.

Each broken variant changes one lock's kind or drops one ``irqsave``, as a careless patch
would, and lockdep must report it: a sleeping lock where sleeping is forbidden
(``sleep_in_atomic``), a spinlock_t where only spinning is allowed on PREEMPT_RT
(``wait_context``), a lock the handler takes held with interrupts on (``inconsistent``).
"""

from __future__ import annotations

from kvmlock.kvm.guest import guest_write
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.memslots import LOG_DIRTY_PAGES
from kvmlock.kvm.posted_intr import PostedVcpu, post_interrupt
from kvmlock.kvm.tsc import KvmClock, TscSync
from kvmlock.kvm.vm import VM
from kvmlock.scenarios.orders import together
from kvmlock.scenarios.registry import scenario
from kvmlock.sync import peek

__all__: list[str] = []

_NO_SLEEP_IRQ = "nothing sleeps in a hard interrupt"
_NO_SLEEP_OFF = "nothing sleeps with interrupts off"
_NO_SLEEP_NONBLOCK = "nothing sleeps in a non-blockable invalidation"
_ONLY_SPIN = ("where interrupts are off or a hard interrupt runs, only locks that spin on "
              "PREEMPT_RT too (raw spinlocks) are taken")
_NO_SELF_IRQ = ("a lock its handler takes is never held with that interrupt enabled on the "
                "handler's CPU")


# ---------------------------------------------------------------------- posted interrupts

def _wakeup(machine: Machine, *, migrate: bool = False, crossed: bool = False) -> None:
    """vcpu0 halts on CPU 1 (and resumes on CPU 0 when ``migrate``), vcpu1 halts on CPU 0
    (and resumes on CPU 1 when ``crossed``); the IOMMU posts one interrupt to each: the
    wakeup handler runs on CPU 1, then CPU 0."""
    vm = VM(machine, nr_vcpus=2)
    a = PostedVcpu(machine, vm.vcpus[0], cpu=1)
    b = PostedVcpu(machine, vm.vcpus[1], cpu=0)
    together(lambda: a.block(resume_on=0 if migrate else None),
             lambda: b.block(resume_on=1 if crossed else None),
             lambda: (post_interrupt(a, 3), post_interrupt(b, 7)),
             names=["vcpu0 (halt)", "vcpu1 (halt)", "IOMMU"])
    assert a.delivered == {3} and b.delivered == {7}, (a.delivered, b.delivered)
    assert a.cpu == (0 if migrate else 1), "vcpu0 did not move to the CPU it resumed on"
    assert b.cpu == (1 if crossed else 0), "vcpu1 did not move to the CPU it resumed on"
    for c in machine.cpus:
        assert not peek(c, "wakeup_vcpus_on_cpu"), f"a vCPU stayed on cpu{c.cpu}'s wakeup list"


@scenario("posted_intr.migrate.correct", variant="correct", expect="pass",
          rule="a vCPU woken from one CPU's wakeup list resumes on another and leaves the first "
               "list under that CPU's lock, irqs off; the handler runs in hard-IRQ context",
          invariant="every halted vCPU is woken with its own vector; no list keeps a vCPU",
          max_runs=3000,
          catches=("wakeup_lock_spinlock_t", "wakeup_lock_mutex", "pi_list_irqs_on",
                   "pi_load_nests_wakeup_locks"))
def wakeup_migrate() -> None:
    _wakeup(Machine(2), migrate=True)


@scenario("posted_intr.nested_wakeup_locks.broken", variant="broken", expect="lockdep",
          lockdep_kind="recursive",
          rule="a vCPU resuming on another CPU takes itself off the old CPU's wakeup list with "
               "the new CPU's wakeup_vcpus_on_cpu_lock held too: a leaf with a lock inside it",
          invariant="wakeup_vcpus_on_cpu_lock is a leaf: lockdep reports one CPU's lock taken "
                    "inside another's (one class, no nesting annotation)", max_runs=200)
def wakeup_nested_locks() -> None:
    _wakeup(Machine(2, hazards={"pi_load_nests_wakeup_locks"}), migrate=True)


@scenario("posted_intr.nested_wakeup_locks.deadlock", variant="broken", expect="deadlock",
          rule="the same nesting, lockdep off, with two vCPUs moving between CPUs 0 and 1 in "
               "opposite directions",
          invariant="all tasks blocked: each vCPU holds one CPU's wakeup lock and spins on the "
                    "other's", lockdep=False, max_runs=3000)
def wakeup_nested_locks_deadlock() -> None:
    _wakeup(Machine(2, hazards={"pi_load_nests_wakeup_locks"}), migrate=True, crossed=True)


@scenario("posted_intr.wakeup_lock_mutex.broken", variant="broken", expect="lockdep",
          lockdep_kind="sleep_in_atomic",
          rule="wakeup_vcpus_on_cpu_lock made a mutex: the wakeup handler would sleep in a "
               "hard interrupt", invariant=_NO_SLEEP_IRQ, max_runs=200)
def wakeup_lock_mutex() -> None:
    _wakeup(Machine(2, hazards={"wakeup_lock_mutex"}))


@scenario("posted_intr.wakeup_lock_spinlock_t.broken", variant="broken", expect="lockdep",
          lockdep_kind="wait_context",
          rule="wakeup_vcpus_on_cpu_lock made a spinlock_t: it sleeps on PREEMPT_RT, where a "
               "hard interrupt may only spin", invariant=_ONLY_SPIN, max_runs=200)
def wakeup_lock_spinlock() -> None:
    _wakeup(Machine(2, hazards={"wakeup_lock_spinlock_t"}))


@scenario("posted_intr.wakeup_no_irqsave.broken", variant="broken", expect="lockdep",
          lockdep_kind="inconsistent",
          rule="the vCPU changes its wakeup list without disabling interrupts: the wakeup "
               "handler can interrupt it on its own CPU and spin on the lock it holds",
          invariant=_NO_SELF_IRQ, max_runs=200)
def wakeup_no_irqsave() -> None:
    _wakeup(Machine(2, hazards={"pi_list_irqs_on"}))


# ---------------------------------------------------------------------- TSC

def _tsc(mutant: str) -> None:
    vm = VM(None, nr_vcpus=2, hazards={mutant})
    tsc = TscSync(vm)

    def write(i: int) -> None:
        vcpu = vm.vcpus[i]
        with vcpu.mutex:
            tsc.write(vcpu, 5_000_000 + 3_000 * i, 5_000_000 + 3_000 * i + 7 * i)

    together(lambda: write(0), lambda: write(1), names=["vcpu0 ioctl", "vcpu1 ioctl"])
    tsc.check()


@scenario("tsc.write_lock_mutex.broken", variant="broken", expect="lockdep",
          lockdep_kind="sleep_in_atomic",
          rule="tsc_write_lock made a mutex: taken with interrupts off, it may sleep there",
          invariant=_NO_SLEEP_OFF, max_runs=100)
def tsc_write_lock_mutex() -> None:
    _tsc("tsc_write_lock_mutex")


@scenario("tsc.write_lock_spinlock_t.broken", variant="broken", expect="lockdep",
          lockdep_kind="wait_context",
          rule="tsc_write_lock made a spinlock_t: with interrupts off it sleeps on PREEMPT_RT",
          invariant=_ONLY_SPIN, max_runs=100)
def tsc_write_lock_spinlock() -> None:
    _tsc("tsc_write_lock_spinlock_t")


# ---------------------------------------------------------------------- MMU notifier

def _oom_reap(mutex: bool) -> None:
    vm = VM(nr_vcpus=1, nr_pages=2, host_pages=2,
            hazards={"mn_invalidate_lock_mutex"} if mutex else None)
    vm.set_memory_region(0, base_gfn=0, npages=2, hva=0)
    (v0,) = vm.vcpus
    guest_write(v0, 0, 1)

    def reaper() -> None:
        vm.host.swap_out(0, blockable=False)

    def memslot_updater() -> None:
        vm.set_memory_region(0, base_gfn=0, npages=2, hva=0, flags=LOG_DIRTY_PAGES)

    together(reaper, memslot_updater, names=["oom_reaper", "memslot_updater"])
    assert vm.mmu_invalidate_in_progress == 0, "an invalidation never ended"
    assert peek(vm, "mn_active_invalidate_count") == 0


@scenario("mmu_notifier.nonblocking.correct", variant="correct", expect="pass",
          rule="a non-blockable invalidation (the OOM reaper) racing a memslot update: nothing "
               "on the notifier path sleeps",
          invariant="the invalidation ends and the update waits for it; nothing slept",
          max_runs=5000,
          catches=("mn_invalidate_lock_mutex", "mmu_lock_rwsem"))
def oom_reap_correct() -> None:
    _oom_reap(False)


@scenario("mmu_notifier.nonblocking_mutex.broken", variant="broken", expect="lockdep",
          lockdep_kind="sleep_in_atomic",
          rule="mn_invalidate_lock made a mutex: a non-blockable invalidation would sleep",
          invariant=_NO_SLEEP_NONBLOCK, max_runs=100)
def oom_reap_mutex() -> None:
    _oom_reap(True)


# ---------------------------------------------------------------------- host clocks

def _clocks(lock_in_notifier: bool) -> None:
    m = Machine(2, hazards={"gtod_notifier_takes_kvm_lock"} if lock_in_notifier else None)
    clock = KvmClock(m)
    vms: list[VM] = []

    def timekeeping() -> None:
        clock.tick()
        clock.run_work()

    together(lambda: vms.append(m.create_vm()), timekeeping,
             lambda: clock.cpufreq_change(1, 2_000_000),
             names=["KVM_CREATE_VM", "timer tick + kworker", "cpufreq"])
    assert clock.cpu_tsc_khz[1].peek() == 2_000_000, "the new frequency never reached cpu1"


@scenario("kvmclock.notifiers.correct", variant="correct", expect="pass",
          rule="the timekeeping notifier runs in the timer tick and defers its kvm_lock walk "
               "to a work item; the cpufreq notifier walks vm_list in process context",
          invariant="nothing sleeps in the tick; the new frequency reaches its CPU",
          max_runs=5000,
          catches=("gtod_notifier_takes_kvm_lock", "tk_core_lock_mutex", "tk_core_lock_spinlock_t"))
def clocks_correct() -> None:
    _clocks(False)


@scenario("kvmclock.work_requeue.correct", variant="correct", expect="pass",
          rule="the clock-update work clears its pending flag before walking vm_list, so a "
               "tick during the walk queues it again",
          invariant="once the pending work has run, a VM on vm_list at the last tick got a "
                    "master-clock update request",
          max_runs=5000, catches=("kvmclock_work_clears_pending_late",))
def clock_work_requeue_correct() -> None:
    m = Machine(1)
    clock = KvmClock(m)
    clock.tick()  # a first clock update: the work is queued
    vms: list[VM] = []

    def create_then_tick() -> None:
        vms.append(m.create_vm())
        clock.tick()

    together(clock.run_work, create_then_tick, names=["kworker", "KVM_CREATE_VM + timer tick"])
    clock.run_work()  # the work the second tick queued, if it is still pending
    assert clock.updates.get(id(vms[0]), 0) >= 1, \
        "a VM created before the last tick never got a master-clock update request"


@scenario("kvmclock.gtod_notifier_takes_kvm_lock.broken", variant="broken", expect="lockdep",
          lockdep_kind="sleep_in_atomic",
          rule="the timekeeping notifier takes kvm_lock itself, in the timer tick",
          invariant=_NO_SLEEP_IRQ, max_runs=100)
def clocks_broken() -> None:
    _clocks(True)
