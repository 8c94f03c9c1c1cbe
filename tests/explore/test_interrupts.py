"""Interrupts in the explorer: when one fires is a scheduling choice, never inside irqs-off."""

from __future__ import annotations

import pytest

import kvmlock
from kvmlock import explore, irq
from kvmlock.sync import Atomic64, SpinLock


def _dev(irqsave: bool, rounds: int = 2):
    """A worker takes dev->lock; the device's interrupt handler takes it too."""

    def body() -> None:
        lk = SpinLock("dev->lock")

        def handler() -> None:
            with lk:
                pass

        def worker() -> None:
            for _ in range(rounds):
                with lk.irqsave() if irqsave else lk:
                    pass

        t = kvmlock.spawn(worker, name="worker")
        irq.inject(handler, cpu=t, name="dev_irq")
        t.join()

    return body


def test_handler_spinning_on_its_own_cpus_lock_is_a_deadlock():
    r = explore.check(_dev(False), "dfs", lockdep=False)
    f = r.failure
    assert f is not None and f.kind == "deadlock"
    assert "task 1 (worker) is interrupted by task 2 (dev_irq)" in f.message
    table = f.trace_table()
    # the handler is drawn in the column of the CPU it interrupted, not a column of its own
    assert "<Interrupt> dev_irq" in table and "CPU2" not in table
    assert "dev_irq: blocked: lock dev->lock" in table
    # the schedule replays to the same deadlock
    again = explore.replay(_dev(False), f.schedule, lockdep=False)
    assert [x.kind for x in again.failures] == ["deadlock"]


def test_the_deadlock_needs_the_interrupt_at_the_wrong_moment():
    # Firing before the worker starts, between its critical sections or after it: all fine.
    # Only the schedules that fire while it holds the lock deadlock.
    r = explore.check(_dev(False), "dfs", lockdep=False, stop_on_first=False)
    assert r.exhausted and r.kinds() == {"deadlock"}
    ok = explore.replay(_dev(False), "0x2 1x2 2x3 1x2", lockdep=False)
    assert ok.failures == []


def test_irqsave_makes_it_exhaustive_and_clean():
    r = explore.check(_dev(True))  # dpor asked: it explores with dfs, and says so
    assert r.ok and r.exhausted and r.runs > 3
    assert r.strategy == "dfs" and "interrupts" in r.headline()


def test_without_irqsave_lockdep_reports_it_too():
    r = explore.check(_dev(False))
    assert r.failure is not None and r.failure.kind == "lockdep"
    assert r.failure.lockdep_reports[0].kind == "inconsistent"


def test_dpor_runs_dfs_and_finds_it():
    r = explore.check(_dev(False), "dpor", lockdep=False)
    assert r.failure is not None and r.failure.kind == "deadlock"


@pytest.mark.parametrize("off", [True, False])
def test_never_fires_inside_an_irqs_off_region(off):
    def body() -> None:
        x = Atomic64(0, name="x")

        def handler() -> None:
            assert x.load() != 1, "interrupt inside the irqs-off region"

        def worker() -> None:
            with irq.local_irq_save() if off else irq.local_bh_disable():
                x.store(1)
                x.store(2)

        t = kvmlock.spawn(worker, name="worker")
        irq.inject(handler, cpu=t, name="irq")
        t.join()

    r = explore.check(body, "dfs")
    if off:
        assert r.ok and r.exhausted
    else:  # near-miss: bottom halves off does not keep a hard interrupt out
        assert r.kinds() == {"assertion"}


def test_softirq_waits_for_bottom_halves():
    def body() -> None:
        x = Atomic64(0, name="x")

        def handler() -> None:
            assert irq.in_softirq() and not irq.in_hardirq()
            assert x.load() != 1

        def worker() -> None:
            with irq.local_bh_disable():
                x.store(1)
                x.store(2)

        t = kvmlock.spawn(worker, name="worker")
        irq.inject(handler, cpu=t, soft=True)
        t.join()

    r = explore.check(body, "dfs")
    assert r.ok and r.exhausted


def test_interrupt_after_the_task_ended_still_runs():
    seen = []

    def body() -> None:
        def handler() -> None:
            seen.append(irq.in_hardirq())

        t = kvmlock.spawn(lambda: None, name="idle")
        h = irq.inject(handler, cpu=t)
        t.join()
        h.join()

    r = explore.check(body, "dfs")
    assert r.ok and r.exhausted and seen and all(seen)


def test_inject_with_threads_runs_the_handler_in_interrupt_context():
    seen = []
    h = irq.inject(lambda a: seen.append((a, irq.in_hardirq())), 7)
    h.join()
    assert seen == [(7, True)] and irq.state() == 0
    with pytest.raises(TypeError, match="callable"):
        irq.inject(3)  # type: ignore[arg-type]
