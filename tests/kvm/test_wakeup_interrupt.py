"""The posted-interrupt wakeup handler as an interrupt of the task running on the target CPU:
a vCPU changing that CPU's wakeup list with interrupts on can be interrupted by it, and the
handler then spins for ever on the lock its own CPU holds. With interrupts off around the
list updates (raw_spin_lock_irqsave), the exploration is exhaustive and clean -- within two
preemptions (an interrupt firing counts as one), where the broken variant deadlocks."""

from __future__ import annotations

import kvmlock
from kvmlock import explore
from kvmlock.kvm.machine import Machine
from kvmlock.kvm.posted_intr import PostedVcpu, post_interrupt
from kvmlock.kvm.vm import VM
from kvmlock.sync import peek


def _two_vcpus_on_cpu1(hazards: set[str] | None):
    """vcpu0 and vcpu1 both block on CPU 1; the IOMMU posts one interrupt to each. The wakeup
    vector for vcpu1 is an interrupt of vcpu0's task (running on CPU 1 then); the one for
    vcpu0, the IOMMU runs itself (standing for CPU 1)."""

    def body() -> None:
        m = Machine(2, hazards=hazards)
        vm = VM(m, nr_vcpus=2)
        a, b = (PostedVcpu(m, v, cpu=1) for v in vm.vcpus)
        ta = kvmlock.spawn(a.block, name="vcpu0")
        tb = kvmlock.spawn(b.block, name="vcpu1")
        irqs = [post_interrupt(b, 7, running=ta), post_interrupt(a, 3)]
        ta.join()
        tb.join()
        for h in irqs:
            if h is not None:
                h.join()
        assert a.delivered == {3} and b.delivered == {7}, (a.delivered, b.delivered)
        assert not peek(m.cpus[1], "wakeup_vcpus_on_cpu"), "a vCPU stayed on the wakeup list"

    return body


def test_wakeup_handler_interrupting_a_list_update_with_interrupts_on_deadlocks():
    r = explore.check(_two_vcpus_on_cpu1({"pi_list_irqs_on"}), "dfs", lockdep=False,
                      preemption_bound=2, max_runs=20_000)
    f = r.failure
    assert f is not None and f.kind == "deadlock", r.headline()
    assert "is interrupted by" in f.message and "wakeup vector cpu1" in f.message
    table = f.trace_table()
    assert "<Interrupt> wakeup vector cpu1" in table
    again = explore.replay(_two_vcpus_on_cpu1({"pi_list_irqs_on"}), f.schedule, lockdep=False)
    assert [x.kind for x in again.failures] == ["deadlock"]


def test_with_interrupts_off_around_the_list_updates_it_is_exhaustive_and_clean():
    r = explore.check(_two_vcpus_on_cpu1(None), preemption_bound=2, max_runs=20_000)
    assert r.ok and r.exhausted and r.runs > 1000, r.headline()
    assert r.strategy == "dfs" and "interrupts" in r.headline()
