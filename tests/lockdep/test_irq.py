"""Interrupt state: kvmlock.irq contexts, usage bits and the three interrupt reports."""

from __future__ import annotations

import pytest

from kvmlock import irq, lockdep
from kvmlock.sync import (
    SRCU,
    CpuHotplugLock,
    Mutex,
    RawSpinLock,
    RCUWait,
    RWLock,
    RWSemaphore,
    SpinLock,
    rcu_read_lock,
)


def kinds() -> list[str]:
    return [r.kind for r in lockdep.reports()]


#: The ways of taking a spinlock with interrupts off: its irqsave and irq forms, the function
#: forms, and a plain lock inside local_irq_save() / local_irq_disable().
OFF_FORMS = ["irqsave", "irq", "function", "local_irq_save", "local_irq_disable"]


def _take(lk: SpinLock, off: str | None) -> None:
    """Take ``lk`` and let it go, with interrupts on (``off`` None) or off the way named."""
    if off is None:
        with lk:
            pass
    elif off == "irqsave":
        with lk.irqsave():
            pass
    elif off == "irq":
        with lk.irq():
            pass
    elif off == "function":
        flags = lk.lock_irqsave()
        lk.unlock_irqrestore(flags)
    elif off == "local_irq_save":
        with irq.local_irq_save():
            with lk:
                pass
    else:
        irq.local_irq_disable()
        with lk:
            pass
        irq.local_irq_enable()


# --------------------------------------------------------------------------- contexts


def test_contexts_nest_and_restore():
    assert irq.state() == 0
    with irq.hardirq():
        assert irq.in_hardirq() and irq.irqs_disabled() and irq.in_interrupt()
    assert irq.state() == 0
    flags = irq.local_irq_save()
    assert irq.irqs_disabled()
    inner = irq.local_irq_save()
    irq.local_irq_restore(inner)
    assert irq.irqs_disabled()  # the outer save still holds
    irq.local_irq_restore(flags)
    assert not irq.irqs_disabled()
    with pytest.raises(RuntimeError, match="already restored"):
        irq.local_irq_restore(flags)
    irq.local_bh_disable()
    irq.local_bh_disable()
    irq.local_bh_enable()
    assert irq.in_softirq()  # one level still disabled
    irq.local_bh_enable()
    assert not irq.in_softirq() and irq.state() == 0
    with irq.softirq():
        with irq.local_bh_disable():
            pass
        assert irq.in_softirq()  # bottom halves stay off inside a softirq
    with irq.nonblocking():
        assert irq.in_atomic() and not irq.in_interrupt()
    irq.local_irq_disable()
    assert irq.irqs_disabled()
    irq.local_irq_enable()
    assert irq.state() == 0


def test_bad_calls_are_one_line_errors():
    with pytest.raises(TypeError, match="local_irq_save"):
        irq.local_irq_restore(0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="without local_bh_disable"):
        irq.local_bh_enable()
    with irq.hardirq():
        with pytest.raises(RuntimeError, match="inside a hard-IRQ handler"):
            irq.local_irq_enable()


def test_spinlock_variants_switch_interrupts_around_the_lock():
    sl, raw, rw = SpinLock("t.var.sl"), RawSpinLock("t.var.raw"), RWLock("t.var.rw")
    for section in (sl.irqsave(), raw.irqsave(), rw.read_irqsave(), rw.write_irqsave(),
                    rw.read().irqsave(), rw.write().irq(), sl.irq(), raw.irq()):
        with section:
            assert irq.irqs_disabled()
        assert irq.state() == 0
    for section in (sl.bh(), raw.bh(), rw.read_bh(), rw.write_bh(), rw.read().bh()):
        with section:
            assert irq.in_softirq() and not irq.irqs_disabled()
        assert irq.state() == 0
    flags = sl.lock_irqsave()
    assert irq.irqs_disabled() and sl.locked()
    sl.unlock_irqrestore(flags)
    assert irq.state() == 0 and not sl.locked()
    raw.lock_irq()
    raw.unlock_irq()
    sl.lock_bh()
    sl.unlock_bh()
    f = rw.read_lock_irqsave()
    rw.read_unlock_irqrestore(f)
    f = rw.write_lock_irqsave()
    rw.write_unlock_irqrestore(f)
    rw.read_lock_irq()
    rw.read_unlock_irq()
    rw.write_lock_bh()
    rw.write_unlock_bh()
    assert irq.state() == 0 and kinds() == []
    assert not hasattr(Mutex("t.var.m"), "irqsave")  # a mutex has no such form


def test_threads_are_separate_cpus():
    import threading

    seen = []
    with irq.local_irq_save():
        t = threading.Thread(target=lambda: seen.append(irq.irqs_disabled()))
        t.start()
        t.join()
    assert seen == [False]


# --------------------------------------------------------------------------- inconsistent


def test_inconsistent_handler_then_irqs_on():
    lk = SpinLock("t.inc.A")
    with irq.hardirq():
        with lk:
            pass
    with lk:  # line 107: the handler can interrupt this holder and spin on it forever
        pass
    (r,) = lockdep.reports()
    assert r.kind == "inconsistent"
    assert (r.usage_from, r.usage_to) == ("IN-HARDIRQ-W", "HARDIRQ-ON-W")
    text = str(r)
    assert "WARNING: inconsistent lock state" in text
    assert "inconsistent {IN-HARDIRQ-W} -> {HARDIRQ-ON-W} usage." in text
    assert "[HC0[0]:SC0[0]:HE1:SE1] takes:" in text
    assert " (t.inc.A){?...}-{2:2}, at: tests/lockdep/test_irq.py" in text
    assert "  <Interrupt>\n    lock(t.inc.A);" in text
    assert "test_irq.py" in r.usage_where


@pytest.mark.parametrize("off", OFF_FORMS)
def test_inconsistent_near_miss_interrupts_off(off):
    lk = SpinLock("t.inc.B")
    with irq.hardirq():
        with lk:
            pass
    _take(lk, off)
    assert kinds() == []


def test_inconsistent_found_in_either_order_and_for_softirq():
    a = SpinLock("t.inc.C")
    with a:
        pass
    with irq.hardirq():
        with a:
            pass
    assert kinds() == ["inconsistent"]
    assert lockdep.reports()[0].usage_from == "HARDIRQ-ON-W"
    lockdep.reset()
    b = SpinLock("t.inc.D")
    with irq.softirq():
        with b:
            pass
    with irq.local_irq_save():  # hard interrupts off do not keep a softirq out afterwards...
        with b:
            pass
    assert kinds() == []  # ...but while they are off, none can run: this hold is safe
    with b:
        pass
    assert [(r.kind, r.usage_from, r.usage_to) for r in lockdep.reports()] == [
        ("inconsistent", "IN-SOFTIRQ-W", "SOFTIRQ-ON-W")]


def test_softirq_near_miss_is_bh():
    b = SpinLock("t.inc.E")
    with irq.softirq():
        with b:
            pass
    with b.bh():
        pass
    with irq.local_bh_disable():
        with b:
            pass
    assert kinds() == []


def test_readers_in_handler_and_with_irqs_on_are_consistent_writer_is_not():
    rw = RWLock("t.inc.rw")
    with irq.hardirq():
        with rw.read():
            pass
    with rw.read():
        pass
    assert kinds() == []
    with rw.write():
        pass
    (r,) = lockdep.reports()
    assert (r.usage_from, r.usage_to) == ("IN-HARDIRQ-R", "HARDIRQ-ON-W")


def test_interrupts_reenabled_while_holding_marks_the_held_lock():
    lk = SpinLock("t.inc.held")
    with irq.hardirq():
        with lk:
            pass
    flags = irq.local_irq_save()
    lk.lock()
    assert kinds() == []
    irq.local_irq_restore(flags)  # now held with interrupts on
    assert kinds() == ["inconsistent"]
    lk.unlock()
    assert irq.state() == 0


def test_cached_chain_in_one_state_does_not_hide_another():
    lk = SpinLock("t.inc.cache")
    for _ in range(3):
        with lk:  # the chain [lk] is cached for process context
            pass
    assert kinds() == []
    with irq.hardirq():
        with lk:  # same lock, same (empty) chain below it, other state: validated again
            pass
    assert kinds() == ["inconsistent"]


# --------------------------------------------------------------------------- safe -> unsafe


def _safe_unsafe(b_off: str | None) -> None:
    a, b = SpinLock("t.su.A"), SpinLock("t.su.B")
    with irq.hardirq():
        with a:
            pass  # A is hardirq-safe
    _take(b, b_off)  # with interrupts on: B is hardirq-unsafe
    with a.irqsave():
        with b:  # A -> B joins them
            pass


def test_irq_safe_to_unsafe_order():
    _safe_unsafe(None)
    (r,) = lockdep.reports()
    assert r.kind == "irq_safe_unsafe" and (r.safe, r.unsafe) == ("t.su.A", "t.su.B")
    text = str(r)
    assert "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected" in text
    assert "which would create a new lock dependency:\n (t.su.A){-...}-{2:2} -> " \
           "(t.su.B){+.+.}-{2:2}" in text
    assert "local_irq_disable();" in text and "<Interrupt>" in text
    assert r.irq_class == "HARDIRQ"


@pytest.mark.parametrize("off", OFF_FORMS)
def test_irq_safe_to_unsafe_near_miss(off):
    _safe_unsafe(off)
    assert kinds() == []


def test_irq_safe_to_unsafe_through_a_middle_lock():
    a, m, b = SpinLock("t.su3.A"), SpinLock("t.su3.M"), SpinLock("t.su3.B")
    with irq.hardirq():
        with a:
            pass
    with m.irqsave():
        with b:  # M -> B, B unsafe below
            pass
    with b:
        pass
    assert kinds() == []
    with a.irqsave():
        with m:  # A -> M -> B
            pass
    (r,) = lockdep.reports()
    assert r.kind == "irq_safe_unsafe" and (r.safe, r.unsafe) == ("t.su3.A", "t.su3.B")
    assert [(e.src, e.dst) for e in r.chain] == [("t.su3.A", "t.su3.M"), ("t.su3.M", "t.su3.B")]
    assert "Chain exists of:\n  t.su3.A --> t.su3.M --> t.su3.B" in str(r)


def test_softirq_safe_to_unsafe_and_its_bh_near_miss():
    for bh in (False, True):
        lockdep.reset()
        a, b = SpinLock("t.sus.A"), SpinLock("t.sus.B")
        with irq.softirq():
            with a:
                pass
        with b.bh() if bh else b:
            pass
        with a.bh():
            with b:
                pass
        assert kinds() == ([] if bh else ["irq_safe_unsafe"])
    assert lockdep.reports() == []


# --------------------------------------------------------------------------- inversion


def _inversion(order: str, b_off: str | None) -> None:
    a, b = SpinLock("t.inv.A"), SpinLock("t.inv.B")
    with a.irqsave():
        with b:  # A -> B, before either has an irq usage
            pass

    def unsafe_b() -> None:
        _take(b, b_off)

    def safe_a() -> None:
        with irq.hardirq():
            with a:
                pass

    for step in ((unsafe_b, safe_a) if order == "forwards" else (safe_a, unsafe_b)):
        step()


@pytest.mark.parametrize("order", ["forwards", "backwards"])
def test_irq_inversion_found_from_either_end(order):
    _inversion(order, None)
    (r,) = lockdep.reports()
    assert r.kind == "irq_inversion" and (r.safe, r.unsafe) == ("t.inv.A", "t.inv.B")
    text = str(r)
    assert "WARNING: possible irq lock inversion dependency detected" in text
    if order == "forwards":  # A just became irq-safe and it took B before
        assert "but this lock took another, HARDIRQ-unsafe lock in the past:" in text
    else:  # B just became irq-unsafe and A took it before
        assert "but this lock was taken by another, HARDIRQ-safe lock in the past:" in text
    assert "and interrupts could create inverse lock ordering between them." in text


@pytest.mark.parametrize("off", OFF_FORMS)
@pytest.mark.parametrize("order", ["forwards", "backwards"])
def test_irq_inversion_near_miss(order, off):
    _inversion(order, off)
    assert kinds() == []


@pytest.mark.parametrize("order", ["forwards", "backwards"])
def test_irq_inversion_through_a_middle_lock(order):
    # A -> M -> B already in the graph; then B becomes unsafe and A safe (the search from A
    # goes forwards through M), or A safe and then B unsafe (from B backwards through M)
    a, m, b = (SpinLock(f"t.inv3.{n}.{order}") for n in "AMB")
    with a.irqsave():
        with m:
            pass
    with m.irqsave():
        with b:
            pass
    steps = [lambda: _take(b, None), lambda: _take_in_handler(a)]
    for step in steps if order == "forwards" else reversed(steps):
        step()
    (r,) = lockdep.reports()
    assert r.kind == "irq_inversion" and (r.safe, r.unsafe) == (a.name, b.name)
    assert [(e.src, e.dst) for e in r.chain] == [(a.name, m.name), (m.name, b.name)]


def _take_in_handler(lk: SpinLock) -> None:
    with irq.hardirq():
        with lk:
            pass


def test_inversion_through_recursive_readers_is_not_strong():
    # A -> rw (read, recursive) and rw (read) -> B: a path that enters rw as a recursive
    # reader and leaves it as a reader is not a deadlock, for interrupts as for cycles.
    a, rw, b = SpinLock("t.invr.A"), RWLock("t.invr.rw"), SpinLock("t.invr.B")
    with a.irqsave():
        with rw.read():
            pass
    with irq.local_irq_save():
        with rw.read():
            with b:
                pass
    with b:
        pass
    with irq.hardirq():
        with a:
            pass
    assert kinds() == []
    with irq.local_irq_save():
        with rw.write():  # now rw is also held exclusively on the way to B: strong path
            with b:
                pass
    assert kinds() == ["irq_safe_unsafe"]


@pytest.mark.parametrize("order", ["link last", "link first"])
def test_a_lock_read_on_the_path_is_judged_by_its_writers(order):
    # rw is read in a handler (read-safe) and read on the way to B (unsafe): the handler's
    # reader gets in beside the holder's, so there is no deadlock, whichever comes last...
    rw, b = RWLock(f"t.rdp.rw.{order}"), SpinLock(f"t.rdp.B.{order}")

    def link(write: bool) -> None:
        with rw.write_irqsave() if write else rw.read_irqsave():
            with b:
                pass

    def usage() -> None:
        with irq.hardirq():
            with rw.read():
                pass
        with b:
            pass

    if order == "link last":
        usage()
        link(False)
    else:
        link(False)
        usage()
    assert kinds() == []
    link(True)  # ...but written on the way to B, the handler's reader waits for the writer
    assert kinds() == ["irq_safe_unsafe"]
    r = lockdep.reports()[0]
    assert (r.safe, r.unsafe, r.usage_from, r.usage_to) == (
        f"t.rdp.rw.{order}", f"t.rdp.B.{order}", "IN-HARDIRQ-R", "HARDIRQ-ON-W")


def test_rcu_read_lock_in_a_handler_and_around_an_irq_unsafe_lock_is_fine():
    b = SpinLock("t.rcu.B")
    with irq.hardirq():
        with rcu_read_lock():
            pass
    with rcu_read_lock():
        with b:  # rcu_read_lock -> B, B taken with interrupts on
            pass
    with b:
        pass
    with irq.softirq():
        with rcu_read_lock():
            pass
    assert kinds() == []


# --------------------------------------------------------------------------- sleeping


@pytest.mark.parametrize("ctx", ["hardirq", "softirq", "irqs_off", "bh_off", "nonblocking",
                                 "spin_irqsave"])
@pytest.mark.parametrize("sleeper", ["mutex", "rwsem", "srcu", "rcuwait"])
def test_sleep_in_atomic_contexts(ctx, sleeper):
    sl = SpinLock("t.sleep.sl")
    m, sem, s, w = Mutex("t.sleep.m"), RWSemaphore("t.sleep.sem"), SRCU("t.sleep.srcu"), \
        RCUWait("t.sleep.w")
    enter = {"hardirq": irq.hardirq, "softirq": irq.softirq, "irqs_off": irq.local_irq_save,
             "bh_off": irq.local_bh_disable, "nonblocking": irq.nonblocking,
             "spin_irqsave": sl.irqsave}[ctx]

    def sleep() -> None:
        if sleeper == "mutex":
            with m:
                pass
        elif sleeper == "rwsem":
            with sem.read():
                pass
        elif sleeper == "srcu":
            s.synchronize()
        else:
            w.wait(lambda: True)

    sleep()  # near-miss: the same in process context
    assert kinds() == []
    with enter():
        sleep()
    assert "sleep_in_atomic" in kinds()
    r = next(r for r in lockdep.reports() if r.kind == "sleep_in_atomic")
    if ctx == "spin_irqsave":
        assert r.held == "t.sleep.sl"
    else:
        assert r.context and r.context in str(r)


@pytest.mark.parametrize("sleeper", ["mutex", "rwsem", "srcu", "rcuwait"])
def test_sleeping_in_an_rcu_read_side_critical_section(sleeper):
    sl, s, m, sem = SpinLock("t.rcusl.sl"), SRCU("t.rcusl.srcu"), Mutex("t.rcusl.m"), \
        RWSemaphore("t.rcusl.sem")

    def take(lock: object) -> None:
        with lock:  # type: ignore[attr-defined]
            pass

    sleepers = {"mutex": lambda: take(m), "rwsem": lambda: take(sem.read()),
                "srcu": s.synchronize, "rcuwait": lambda: RCUWait("t.rcusl.w").wait(lambda: True)}
    with rcu_read_lock():  # near-miss: what never sleeps is fine inside
        with sl, s.read():
            pass
    sleepers[sleeper]()  # ...and so is sleeping after rcu_read_unlock()
    assert kinds() == []
    with rcu_read_lock():
        sleepers[sleeper]()
    (r,) = lockdep.reports()
    assert r.kind == "sleep_in_atomic" and r.context == "an RCU read-side critical section"
    assert "runs in an RCU read-side critical section" in str(r)


# --------------------------------------------------------------------------- contexts apart


def test_handler_locks_do_not_depend_on_the_interrupted_ones():
    a, b = SpinLock("t.ctx.A"), SpinLock("t.ctx.B")
    with a:
        with irq.hardirq():
            with b:
                pass
    g = lockdep.graph()
    assert not g.has_edge("t.ctx.A", "t.ctx.B")
    with a:
        with b:
            pass
    assert lockdep.graph().has_edge("t.ctx.A", "t.ctx.B")


def test_handler_taking_a_lock_its_cpu_holds_is_reported():
    a = SpinLock("t.ctx.AA")
    with a:
        with irq.hardirq():
            with pytest.raises(lockdep.LockdepError):
                lockdep.set_mode("raise")
                try:
                    with a:  # would spin forever on its own CPU
                        pass
                finally:
                    lockdep.set_mode("collect")
    assert set(kinds()) >= {"inconsistent"}


def test_out_of_order_release_across_a_state_change():
    a, b = SpinLock("t.ooo.A"), SpinLock("t.ooo.B")
    flags = a.lock_irqsave()
    b.lock()
    a.unlock()  # not the last one taken: B is re-validated without A, still irqs off
    irq.local_irq_restore(flags)
    b.unlock()
    assert irq.state() == 0 and kinds() == []
    assert lockdep.held_locks() == []


# --------------------------------------------------------------------------- wait types


def test_wait_context_in_hardirq(raw_nesting):
    raw, sl = RawSpinLock("t.wc.raw"), SpinLock("t.wc.sl")
    with irq.hardirq():
        with raw:  # a raw spinlock in a handler: fine
            pass
    assert kinds() == []
    with irq.hardirq():
        with sl:  # spinlock_t sleeps on PREEMPT_RT, and a handler may not
            pass
    (r,) = lockdep.reports()
    assert r.kind == "wait_context" and r.context == "hard-IRQ context"
    assert "(t.wc.sl){-...}-{3:3}" in str(r)


def test_wait_types_print_per_kind(raw_nesting):
    m, sl, raw = Mutex("t.wt.m"), SpinLock("t.wt.sl"), RawSpinLock("t.wt.raw")
    with raw:
        with sl:
            pass
    r = lockdep.reports()[0]
    assert r.annotations["t.wt.raw"] == "{+.+.}-{2:2}"
    assert r.annotations["t.wt.sl"] == "{+.+.}-{3:3}"
    lockdep.reset()
    lockdep.prove_raw_nesting(False)
    with sl:
        with m:
            pass
    r = lockdep.reports()[0]
    # without raw-lock nesting, spinlock_t is a plain spinning lock (2) and sleep is 3
    assert (r.annotations["t.wt.sl"], r.annotations["t.wt.m"]) == ("{+.+.}-{2:2}",
                                                                   "{+.+.}-{3:3}")


def test_wait_types_of_the_rcu_read_side_and_unchecked_kinds(raw_nesting):
    # as the kernel prints them: rcu_read_lock never waits (1) and allows inside what a
    # spinlock_t allows; it is acquired unchecked, so it has no usage; percpu_rw_semaphore
    # and SRCU maps carry no wait type (0)
    sl, m, s, hp = SpinLock("t.wr.sl"), Mutex("t.wr.m"), SRCU("t.wr.srcu"), \
        CpuHotplugLock("t.wr.hp")
    with irq.hardirq():
        with rcu_read_lock():
            pass
    with hp.read(), s.read(), rcu_read_lock():
        with sl:  # spinlock_t (3) inside rcu_read_lock (inner 3): fine on PREEMPT_RT
            pass
    assert kinds() == []
    with rcu_read_lock():
        with m:  # a mutex (4) is not
            pass
    assert set(kinds()) == {"wait_context", "sleep_in_atomic"}
    r = next(r for r in lockdep.reports() if r.kind == "wait_context")
    assert r.held == "rcu_read_lock"
    assert r.annotations["rcu_read_lock"] == "{....}-{1:3}"
    assert r.annotations["t.wr.m"] == "{+.+.}-{4:4}"
    lockdep.reset()
    lockdep.prove_raw_nesting(False)
    with hp.read(), s.read(), rcu_read_lock():
        with m:
            pass
    (r,) = lockdep.reports()
    assert r.annotations == {"rcu_read_lock": "{....}-{1:2}", "t.wr.srcu": "{.+.+}-{0:0}",
                             "t.wr.hp": "{.+.+}-{0:0}", "t.wr.m": "{+.+.}-{3:3}"}


def test_irqs_disabled_by_hand_allow_only_spinning_on_rt(raw_nesting):
    sl, raw, rw = SpinLock("t.rt.sl"), RawSpinLock("t.rt.raw"), RWLock("t.rt.rw")
    # the lock's own _irqsave forms are fine: on PREEMPT_RT they leave interrupts on
    for section in (sl.irqsave(), sl.irq(), rw.write_irqsave(), rw.read().irqsave(),
                    raw.irqsave()):
        with section:
            pass
    with raw.irqsave():
        with irq.local_irq_save():
            pass
    with irq.local_irq_save():
        with raw:  # a raw spinlock never sleeps
            pass
    assert kinds() == []
    with irq.local_irq_save():  # raw_spin_lock_irqsave's half, then a spinlock_t
        with sl:
            pass
    (r,) = lockdep.reports()
    assert r.kind == "wait_context" and r.context == "interrupts disabled"
    lockdep.reset()
    with sl.irqsave():
        with irq.local_irq_save():  # now off for real, also on PREEMPT_RT
            with rw.read():
                pass
    assert kinds() == ["wait_context"]


def test_irqs_disabled_by_hand_are_fine_without_raw_nesting():
    sl = SpinLock("t.rt.sl2")
    with irq.local_irq_save():
        with sl:
            pass
    assert kinds() == []
