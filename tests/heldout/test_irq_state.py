"""Held-out: interrupt-state cases, each with its expected lockdep verdict.

The verdicts follow the kernel's lockdep rules for usage bits: a lock taken in a hard (soft)
interrupt handler is irq-safe and must never be held with that interrupt enabled
(``inconsistent``); an irq-safe lock must never be held while taking an irq-unsafe one
(``irq_safe_unsafe`` when the dependency is new, ``irq_inversion`` when the usage bit comes
last); readers in a handler and readers with interrupts on never wait for each other; and
nothing may sleep in interrupt, irqs-off, bh-off, spinning or non-blockable context.
"""

from __future__ import annotations

import pytest

from kvmlock import explore, irq, lockdep, spawn
from kvmlock.sync import SRCU, Mutex, RawSpinLock, RWLock, RWSemaphore, SpinLock


def verdict(fn) -> list[str]:
    with lockdep.isolated():
        fn()
        return sorted(r.kind for r in lockdep.reports())


def reports_of(fn):
    with lockdep.isolated():
        fn()
        return list(lockdep.reports())


def in_hardirq(lock):
    with irq.hardirq():
        with lock:
            pass


def in_softirq(lock):
    with irq.softirq():
        with lock:
            pass


def plain(lock):
    with lock:
        pass


# --------------------------------------------------------------------------- inconsistent


def c_hard_then_on():
    a = SpinLock("h.a")
    in_hardirq(a)
    plain(a)


def c_on_then_hard():
    a = SpinLock("h.a")
    plain(a)
    in_hardirq(a)


def c_hard_then_irqsave():
    a = SpinLock("h.a")
    in_hardirq(a)
    with a.irqsave():
        pass


def c_hard_then_irq():
    a = SpinLock("h.a")
    in_hardirq(a)
    with a.irq():
        pass


def c_hard_then_local_irq_save():
    a = SpinLock("h.a")
    in_hardirq(a)
    with irq.local_irq_save():
        with a:
            pass


def c_hard_then_function_forms():
    a = SpinLock("h.a")
    in_hardirq(a)
    flags = irq.local_irq_save()
    a.lock()
    a.unlock()
    irq.local_irq_restore(flags)
    flags = a.lock_irqsave()
    a.unlock_irqrestore(flags)
    a.lock_irq()
    a.unlock_irq()


def c_hard_then_bh_only():
    # bottom halves off leave hard interrupts on: the handler can still interrupt the holder
    a = SpinLock("h.a")
    in_hardirq(a)
    with a.bh():
        pass


def c_held_across_irq_enable():
    a = SpinLock("h.a")
    in_hardirq(a)
    irq.local_irq_disable()
    a.lock()
    irq.local_irq_enable()  # a is still held: it becomes HARDIRQ-ON now
    a.unlock()


def c_released_before_irq_enable():
    a = SpinLock("h.a")
    in_hardirq(a)
    irq.local_irq_disable()
    a.lock()
    a.unlock()
    irq.local_irq_enable()


def c_trylock_in_hardirq_then_on():
    # a trylock cannot be the one that waits, so it never makes a lock irq-safe
    a = SpinLock("h.try")
    with irq.hardirq():
        assert a.trylock()
        a.unlock()
    plain(a)


def c_unlock_irq_turns_interrupts_on():
    # spin_unlock_irq enables interrupts whatever they were before: b is then taken with
    # them on, inside what the code meant to be an irqs-off region
    a, b = SpinLock("ui.a"), SpinLock("ui.b")
    in_hardirq(b)
    with irq.local_irq_save():
        with a.irq():
            pass
        with b:
            pass


def c_unlock_irqrestore_keeps_them_off():
    a, b = SpinLock("ui.a"), SpinLock("ui.b")
    in_hardirq(b)
    with irq.local_irq_save():
        with a.irqsave():
            pass
        with b:
            pass


def c_raw_hard_then_on():
    a = RawSpinLock("h.raw")
    in_hardirq(a)
    plain(a)


def c_raw_hard_then_irqsave():
    a = RawSpinLock("h.raw")
    in_hardirq(a)
    with a.irqsave():
        pass


def c_across_threads():
    # each thread is a CPU: the handler on one CPU, the irqs-on use on another; one class
    a = SpinLock("h.threads")
    spawn(in_hardirq, a).join()
    spawn(plain, a).join()


def c_across_threads_irqsave():
    a = SpinLock("h.threads")
    spawn(in_hardirq, a).join()

    def careful():
        with a.irqsave():
            pass

    spawn(careful).join()


def c_soft_then_on():
    a = SpinLock("s.a")
    in_softirq(a)
    plain(a)


def c_on_then_soft():
    a = SpinLock("s.a")
    plain(a)
    in_softirq(a)


def c_soft_then_bh():
    a = SpinLock("s.a")
    in_softirq(a)
    with a.bh():
        pass


def c_soft_then_local_bh_disable():
    a = SpinLock("s.a")
    in_softirq(a)
    with irq.local_bh_disable():
        with a:
            pass


def c_soft_then_irqsave():
    # interrupts off: no softirq can run either, so no ENABLED bit is recorded
    a = SpinLock("s.a")
    in_softirq(a)
    with a.irqsave():
        pass


def c_soft_and_hard_handlers():
    # a softirq handler runs with hard interrupts on: a hard interrupt can hit it holding a
    a = SpinLock("s.both")
    in_softirq(a)
    in_hardirq(a)


def c_soft_irqsave_and_hard_handlers():
    a = SpinLock("s.both")
    with irq.softirq():
        with a.irqsave():
            pass
    in_hardirq(a)


def c_bh_nesting_still_off():
    a = SpinLock("s.nest")
    in_softirq(a)
    irq.local_bh_disable()
    irq.local_bh_disable()
    irq.local_bh_enable()  # one level left: bottom halves still off
    with a:
        pass
    irq.local_bh_enable()


def c_bh_nesting_back_on():
    a = SpinLock("s.nest")
    in_softirq(a)
    irq.local_bh_disable()
    irq.local_bh_disable()
    irq.local_bh_enable()
    irq.local_bh_enable()
    with a:
        pass


# rwlock_t: readers in a handler and readers with interrupts on do not wait for each other


def rw_read(rw):
    with rw.read():
        pass


def rw_write(rw):
    with rw.write():
        pass


def c_rw_hard_read_on_read():
    rw = RWLock("rw.a")
    with irq.hardirq():
        rw_read(rw)
    rw_read(rw)


def c_rw_hard_read_on_write():
    rw = RWLock("rw.a")
    with irq.hardirq():
        rw_read(rw)
    rw_write(rw)


def c_rw_hard_write_on_read():
    rw = RWLock("rw.a")
    with irq.hardirq():
        rw_write(rw)
    rw_read(rw)


def c_rw_hard_read_write_irqsave():
    rw = RWLock("rw.a")
    with irq.hardirq():
        rw_read(rw)
    with rw.write_irqsave():
        pass
    flags = rw.write_lock_irqsave()
    rw.write_unlock_irqrestore(flags)
    rw_read(rw)


def c_rw_hard_write_read_irqsave():
    rw = RWLock("rw.a")
    with irq.hardirq():
        rw_write(rw)
    with rw.read_irqsave():
        pass
    with rw.read_irq():
        pass


def c_rw_soft_read_on_read():
    rw = RWLock("rw.s")
    with irq.softirq():
        rw_read(rw)
    rw_read(rw)


def c_rw_soft_read_on_write():
    rw = RWLock("rw.s")
    with irq.softirq():
        rw_read(rw)
    rw_write(rw)


def c_rw_soft_read_write_bh():
    rw = RWLock("rw.s")
    with irq.softirq():
        rw_read(rw)
    with rw.write_bh():
        pass


INCONSISTENT = [
    (c_hard_then_on, ["inconsistent"]),
    (c_on_then_hard, ["inconsistent"]),
    (c_hard_then_irqsave, []),
    (c_hard_then_irq, []),
    (c_hard_then_local_irq_save, []),
    (c_hard_then_function_forms, []),
    (c_hard_then_bh_only, ["inconsistent"]),
    (c_held_across_irq_enable, ["inconsistent"]),
    (c_released_before_irq_enable, []),
    (c_trylock_in_hardirq_then_on, []),
    (c_unlock_irq_turns_interrupts_on, ["inconsistent"]),
    (c_unlock_irqrestore_keeps_them_off, []),
    (c_raw_hard_then_on, ["inconsistent"]),
    (c_raw_hard_then_irqsave, []),
    (c_across_threads, ["inconsistent"]),
    (c_across_threads_irqsave, []),
    (c_soft_then_on, ["inconsistent"]),
    (c_on_then_soft, ["inconsistent"]),
    (c_soft_then_bh, []),
    (c_soft_then_local_bh_disable, []),
    (c_soft_then_irqsave, []),
    (c_soft_and_hard_handlers, ["inconsistent"]),
    (c_soft_irqsave_and_hard_handlers, []),
    (c_bh_nesting_still_off, []),
    (c_bh_nesting_back_on, ["inconsistent"]),
    (c_rw_hard_read_on_read, []),
    (c_rw_hard_read_on_write, ["inconsistent"]),
    (c_rw_hard_write_on_read, ["inconsistent"]),
    (c_rw_hard_read_write_irqsave, []),
    (c_rw_hard_write_read_irqsave, []),
    (c_rw_soft_read_on_read, []),
    (c_rw_soft_read_on_write, ["inconsistent"]),
    (c_rw_soft_read_write_bh, []),
]


@pytest.mark.parametrize("case,expected", INCONSISTENT, ids=[c.__name__ for c, _ in INCONSISTENT])
def test_inconsistent_lock_state(case, expected):
    assert verdict(case) == expected


def test_inconsistent_usage_lines():
    (r,) = reports_of(c_hard_then_on)
    assert "inconsistent {IN-HARDIRQ-W} -> {HARDIRQ-ON-W} usage." in str(r)
    (r,) = reports_of(c_rw_hard_read_on_write)
    assert "{IN-HARDIRQ-R} -> {HARDIRQ-ON-W}" in str(r)
    (r,) = reports_of(c_rw_hard_write_on_read)
    assert "{IN-HARDIRQ-W} -> {HARDIRQ-ON-R}" in str(r)
    (r,) = reports_of(c_soft_then_on)
    assert "{IN-SOFTIRQ-W} -> {SOFTIRQ-ON-W}" in str(r)
    (r,) = reports_of(c_on_then_hard)
    assert "{HARDIRQ-ON-W} -> {IN-HARDIRQ-W}" in str(r)


def test_documented_nic_splat():
    def nic():
        rx_lock = SpinLock("nic->rx_lock")
        in_hardirq(rx_lock)
        plain(rx_lock)

    (r,) = reports_of(nic)
    text = str(r)
    assert "WARNING: inconsistent lock state" in text
    assert "(nic->rx_lock){?...}-{2:2}" in text
    assert "[HC0[0]:SC0[0]:HE1:SE1]" in text
    assert "<Interrupt>" in text


# --------------------------------------------------------------------------- safe -> unsafe


def c_safe_to_unsafe():
    a, b = SpinLock("su.a"), SpinLock("su.b")
    in_hardirq(a)  # a: HARDIRQ-safe
    plain(b)       # b: HARDIRQ-unsafe
    with a.irqsave():
        with b:    # new a -> b
            pass


def c_safe_to_safe_irqsave_b():
    a, b = SpinLock("su.a"), SpinLock("su.b")
    in_hardirq(a)
    with b.irqsave():  # b is never held with interrupts on
        pass
    with a.irqsave():
        with b:
            pass


def c_unsafe_to_safe():
    a, b = SpinLock("su.a"), SpinLock("su.b")
    in_hardirq(a)
    with b:                  # b -> a: an unsafe lock outside a safe one is fine
        with a.irqsave():
            pass


def c_safe_to_unsafe_transitive():
    a, c, b = SpinLock("su.a"), SpinLock("su.c"), SpinLock("su.b")
    in_hardirq(a)
    with irq.local_irq_save():
        with a:
            with c:          # a -> c; c has no usage bit yet
                pass
    plain(b)
    with irq.local_irq_save():
        with c:
            with b:          # new c -> b: a (safe, before c) now reaches b (unsafe)
                pass


def c_soft_safe_to_unsafe():
    a, b = SpinLock("su.sa"), SpinLock("su.sb")
    in_softirq(a)
    plain(b)
    with a.bh():
        with b:
            pass


def c_soft_safe_to_bh_only():
    a, b = SpinLock("su.sa"), SpinLock("su.sb")
    in_softirq(a)
    with b.bh():
        pass
    with a.bh():
        with b:
            pass


def c_hard_safe_b_irqs_off_everywhere():
    # the near-miss with every use of b inside local_irq_save
    a, b = SpinLock("su.a"), SpinLock("su.b")
    in_hardirq(a)
    with irq.local_irq_save():
        with b:
            pass
        with a:
            with b:
                pass


SAFE_UNSAFE = [
    (c_safe_to_unsafe, ["irq_safe_unsafe"]),
    (c_safe_to_safe_irqsave_b, []),
    (c_unsafe_to_safe, []),
    (c_safe_to_unsafe_transitive, ["irq_safe_unsafe"]),
    (c_soft_safe_to_unsafe, ["irq_safe_unsafe"]),
    (c_soft_safe_to_bh_only, []),
    (c_hard_safe_b_irqs_off_everywhere, []),
]


@pytest.mark.parametrize("case,expected", SAFE_UNSAFE, ids=[c.__name__ for c, _ in SAFE_UNSAFE])
def test_irq_safe_unsafe(case, expected):
    assert verdict(case) == expected


def test_safe_unsafe_title():
    (r,) = reports_of(c_safe_to_unsafe)
    assert "HARDIRQ-safe -> HARDIRQ-unsafe lock order detected" in str(r)
    (r,) = reports_of(c_soft_safe_to_unsafe)
    assert "SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected" in str(r)


# --------------------------------------------------------------------------- irq inversion


def dep_irqs_off(first, second):
    with irq.local_irq_save():
        with first:
            with second:
                pass


def c_inv_unsafe_then_safe():
    a, b = SpinLock("inv.a"), SpinLock("inv.b")
    dep_irqs_off(a, b)   # a -> b, no usage bits
    plain(b)             # b becomes unsafe
    in_hardirq(a)        # a becomes safe while it reaches unsafe b


def c_inv_safe_then_unsafe():
    a, b = SpinLock("inv.a"), SpinLock("inv.b")
    dep_irqs_off(a, b)
    in_hardirq(a)        # a safe
    plain(b)             # b becomes unsafe while safe a reaches it


def c_inv_near_b_irqsave():
    a, b = SpinLock("inv.a"), SpinLock("inv.b")
    dep_irqs_off(a, b)
    in_hardirq(a)
    with b.irqsave():
        pass


def c_inv_near_reverse_dependency():
    a, b = SpinLock("inv.a"), SpinLock("inv.b")
    dep_irqs_off(b, a)   # b -> a: unsafe before safe is fine
    in_hardirq(a)
    plain(b)


def c_inv_soft_unsafe_then_safe():
    a, b = SpinLock("inv.sa"), SpinLock("inv.sb")
    dep_irqs_off(a, b)
    plain(b)
    in_softirq(a)


def c_inv_soft_safe_then_unsafe():
    a, b = SpinLock("inv.sa"), SpinLock("inv.sb")
    dep_irqs_off(a, b)
    in_softirq(a)
    plain(b)


def c_inv_soft_near_bh():
    a, b = SpinLock("inv.sa"), SpinLock("inv.sb")
    dep_irqs_off(a, b)
    in_softirq(a)
    with b.bh():
        pass


def c_inv_rw_write_dep_read_in_handler():
    # a write-held (interrupts off) while taking b; b taken with interrupts on; a read in a
    # handler: the handler's read waits for the writer, who waits for b, whose holder is
    # the interrupted task
    a, b = RWLock("inv.rwa"), SpinLock("inv.b2")
    with irq.local_irq_save():
        with a.write():
            with b:
                pass
    plain(b)
    with irq.hardirq():
        with a.read():
            pass


def c_inv_rw_near_b_irqsave():
    a, b = RWLock("inv.rwa"), SpinLock("inv.b2")
    with irq.local_irq_save():
        with a.write():
            with b:
                pass
    with b.irqsave():
        pass
    with irq.hardirq():
        with a.read():
            pass


INVERSION = [
    (c_inv_unsafe_then_safe, ["irq_inversion"]),
    (c_inv_safe_then_unsafe, ["irq_inversion"]),
    (c_inv_near_b_irqsave, []),
    (c_inv_near_reverse_dependency, []),
    (c_inv_soft_unsafe_then_safe, ["irq_inversion"]),
    (c_inv_soft_safe_then_unsafe, ["irq_inversion"]),
    (c_inv_soft_near_bh, []),
    (c_inv_rw_write_dep_read_in_handler, ["irq_inversion"]),
    (c_inv_rw_near_b_irqsave, []),
]


@pytest.mark.parametrize("case,expected", INVERSION, ids=[c.__name__ for c, _ in INVERSION])
def test_irq_inversion(case, expected):
    assert verdict(case) == expected


def test_inversion_title():
    (r,) = reports_of(c_inv_safe_then_unsafe)
    assert "possible irq lock inversion dependency detected" in str(r)


# --------------------------------------------------------------------------- sleeping in atomic


def c_mutex_in_hardirq():
    m = Mutex("sl.m")
    with irq.hardirq():
        with m:
            pass


def c_mutex_in_softirq():
    m = Mutex("sl.m")
    with irq.softirq():
        with m:
            pass


def c_mutex_irqs_off():
    m = Mutex("sl.m")
    with irq.local_irq_save():
        with m:
            pass


def c_mutex_bh_off():
    m = Mutex("sl.m")
    with irq.local_bh_disable():
        with m:
            pass


def c_mutex_nonblocking():
    m = Mutex("sl.m")
    with irq.nonblocking():
        with m:
            pass


def c_mutex_in_spin_irqsave():
    s, m = SpinLock("sl.s"), Mutex("sl.m")
    with s.irqsave():
        with m:
            pass


def c_mutex_in_raw():
    s, m = RawSpinLock("sl.raw"), Mutex("sl.m")
    with s:
        with m:
            pass


def c_mutex_in_rwlock_read():
    rw, m = RWLock("sl.rw"), Mutex("sl.m")
    with rw.read():
        with m:
            pass


def c_rwsem_in_hardirq():
    sem = RWSemaphore("sl.sem")
    with irq.hardirq():
        with sem.read():
            pass


def c_srcu_sync_in_hardirq():
    s = SRCU("sl.srcu")
    with irq.hardirq():
        s.synchronize()


def c_might_sleep_in_softirq():
    with irq.softirq():
        lockdep.might_sleep()


def c_near_mutex_after_restore():
    m = Mutex("sl.m")
    flags = irq.local_irq_save()
    irq.local_irq_restore(flags)
    irq.local_bh_disable()
    irq.local_bh_enable()
    with irq.nonblocking():
        pass
    with m:
        pass
    lockdep.might_sleep()


def c_near_spin_in_hardirq():
    s = SpinLock("sl.s")
    in_hardirq(s)


def c_near_spin_inside_mutex():
    s, m = SpinLock("sl.s"), Mutex("sl.m")
    with m:
        with s.irqsave():
            pass


def c_near_mutex_trylock_under_spin():
    # a trylock never sleeps
    s, m = SpinLock("sl.s"), Mutex("sl.m")
    with s:
        assert m.trylock()
        m.unlock()


def c_near_rwsem_and_srcu_in_process():
    sem, s = RWSemaphore("sl.sem"), SRCU("sl.srcu")
    with sem.read():
        pass
    with sem.write():
        pass
    s.synchronize()


SLEEP = [
    (c_mutex_in_hardirq, ["sleep_in_atomic"]),
    (c_mutex_in_softirq, ["sleep_in_atomic"]),
    (c_mutex_irqs_off, ["sleep_in_atomic"]),
    (c_mutex_bh_off, ["sleep_in_atomic"]),
    (c_mutex_nonblocking, ["sleep_in_atomic"]),
    (c_mutex_in_spin_irqsave, ["sleep_in_atomic"]),
    (c_mutex_in_raw, ["sleep_in_atomic"]),
    (c_mutex_in_rwlock_read, ["sleep_in_atomic"]),
    (c_rwsem_in_hardirq, ["sleep_in_atomic"]),
    (c_srcu_sync_in_hardirq, ["sleep_in_atomic"]),
    (c_might_sleep_in_softirq, ["sleep_in_atomic"]),
    (c_near_mutex_after_restore, []),
    (c_near_spin_in_hardirq, []),
    (c_near_spin_inside_mutex, []),
    (c_near_rwsem_and_srcu_in_process, []),
    (c_near_mutex_trylock_under_spin, []),
]


@pytest.mark.parametrize("case,expected", SLEEP, ids=[c.__name__ for c, _ in SLEEP])
def test_sleep_in_atomic(case, expected):
    assert verdict(case) == expected


def test_context_queries():
    with lockdep.isolated():
        assert not irq.in_interrupt() and not irq.irqs_disabled()
        with irq.hardirq():
            assert irq.in_hardirq() and irq.in_interrupt()
        with irq.softirq():
            assert irq.in_softirq() and not irq.in_hardirq()
        with irq.local_irq_save():
            assert irq.irqs_disabled()
            with irq.local_irq_save():
                pass
            assert irq.irqs_disabled()  # the inner restore puts back "off"
        assert not irq.irqs_disabled()


# --------------------------------------------------------------------------- the explorer


def driver(mode, cpu="worker", soft=False):
    def body():
        dev_lock = SpinLock("dev->lock")

        def handler():
            with dev_lock:
                pass

        def worker():
            for _ in range(2):
                if mode == "irqsave":
                    with dev_lock.irqsave():
                        pass
                elif mode == "local_irq_save":
                    with irq.local_irq_save():
                        with dev_lock:
                            pass
                elif mode == "bh":
                    with dev_lock.bh():
                        pass
                else:
                    with dev_lock:
                        pass

        t = spawn(worker)
        if cpu == "worker":
            irq.inject(handler, cpu=t, name="dev_irq", soft=soft)
        else:
            irq.inject(handler, name="dev_irq", soft=soft)  # the caller's CPU, which holds nothing
        t.join()

    return body


def test_explorer_interrupt_at_wrong_moment_deadlocks():
    res = explore.check(driver("plain"), lockdep=False)
    assert set(res.kinds()) == {"deadlock"}
    assert "interrupted by" in res.failure.message
    assert "<Interrupt>" in str(res)
    rep = explore.replay(driver("plain"), res.failure.schedule, lockdep=False)
    assert set(rep.kinds()) == {"deadlock"}


def test_explorer_only_some_moments_deadlock():
    res = explore.check(driver("plain"), lockdep=False, stop_on_first=False, shrink=False)
    assert res.exhausted
    assert set(res.kinds()) == {"deadlock"}
    assert res.runs > len(res.failures) >= 1  # an interrupt outside the section is harmless


@pytest.mark.parametrize("mode", ["irqsave", "local_irq_save"])
def test_explorer_irqs_off_fix_is_exhaustive_and_clean(mode):
    res = explore.check(driver(mode), lockdep=True)
    assert res.ok and res.exhausted


def test_explorer_bh_off_does_not_stop_a_hard_interrupt():
    res = explore.check(driver("bh"), lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


def test_explorer_softirq_with_bh_off_is_clean():
    res = explore.check(driver("bh", soft=True), lockdep=True)
    assert res.ok and res.exhausted


def test_explorer_softirq_without_bh_off_deadlocks():
    res = explore.check(driver("plain", soft=True), lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


def test_explorer_interrupt_on_another_cpu_waits_but_lockdep_still_warns():
    # on the caller's CPU the handler just waits for the worker: no execution deadlocks...
    res = explore.check(driver("plain", cpu="main"), lockdep=False)
    assert res.ok and res.exhausted
    # ...but the lock is irq-safe and taken with interrupts on: lockdep reports the hazard
    res = explore.check(driver("plain", cpu="main"), lockdep=True)
    assert set(res.kinds()) == {"lockdep"}
    assert {r.kind for r in res.failure.lockdep_reports} == {"inconsistent"}


# --------------------------------------------------------------------------- usage characters


def abba(a, b, ctx):
    with ctx():
        with a:
            with b:
                pass
    with ctx():
        with b:
            with a:
                pass


@pytest.mark.parametrize(
    "ctx,chars",
    [
        (irq.hardirq, "{-...}"),           # taken only inside a hard-IRQ handler
        (irq.local_irq_save, "{....}"),    # only ever with every interrupt off
    ],
    ids=["in-hardirq", "irqs-off"],
)
def test_usage_characters_in_a_circular_splat(ctx, chars):
    def case():
        abba(SpinLock("uc.a"), SpinLock("uc.b"), ctx)

    (r,) = reports_of(case)
    assert r.kind == "circular"
    text = str(r)
    assert f"(uc.a){chars}-{{2:2}}" in text and f"(uc.b){chars}-{{2:2}}" in text


def test_usage_characters_plain_process_context():
    import contextlib

    def case():
        abba(SpinLock("uc.a"), SpinLock("uc.b"), contextlib.nullcontext)

    (r,) = reports_of(case)
    assert "(uc.a){+.+.}-{2:2}" in str(r)


# --------------------------------------------------------------------------- every interrupt fires


def test_interrupt_fires_in_every_execution():
    runs: list[list[str]] = []

    def body():
        seen: list[str] = []
        runs.append(seen)
        lock = SpinLock("fire.lock")

        def handler():
            with lock:
                seen.append("fired")

        def worker():
            with lock.irqsave():
                pass

        t = spawn(worker)
        irq.inject(handler, cpu=t, name="fire_irq")
        t.join()

    # dfs asked for directly (dpor would restart as dfs after its first execution)
    res = explore.check(body, strategy="dfs", lockdep=True)
    assert res.ok and res.exhausted
    assert len(runs) == res.runs >= 2
    assert all(seen == ["fired"] for seen in runs)
