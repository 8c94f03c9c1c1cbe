"""Reports as text (kernel-style splat pointing at user code), as data and as JSON; modes."""

import json
import threading

import pytest

from kvmlock import lockdep, spawn
from kvmlock.sync import SRCU, Mutex, RWSemaphore, SpinLock

HERE = "test_reports.py"


def abba():
    a, b = Mutex("kvm->lock"), Mutex("vcpu->mutex")
    with a:
        with b:  # line of the first edge
            pass
    with b:
        with a:
            pass
    return a, b


def test_circular_splat_reads_like_the_kernel():
    abba()
    (r,) = lockdep.reports()
    text = str(r)
    assert "WARNING: possible circular locking dependency detected" in text
    assert "is trying to acquire lock:\n (kvm->lock)" in text
    assert "but task is already holding lock:\n (vcpu->mutex)" in text
    assert "the existing dependency chain (in reverse order) is:" in text
    # each lock with its usage characters (held with interrupts on) and wait type (sleeps)
    assert "-> #1 (vcpu->mutex){+.+.}-{3:3}:" in text and "-> #0 (kvm->lock){+.+.}-{3:3}:" in text
    assert " Possible unsafe locking scenario:" in text and "*** DEADLOCK ***" in text
    assert "  lock(vcpu->mutex);\n" + " " * 31 + "lock(kvm->lock);" in text
    # every location is a line of this file, not of kvmlock
    assert r.where.startswith("tests/lockdep/" + HERE) or HERE in r.where
    assert all(HERE in e.where for e in r.chain)
    assert "kvmlock/sync" not in text and "kvmlock/lockdep" not in text
    assert [h.name for h in r.held_locks] == ["vcpu->mutex"]


def test_circular_report_data_and_json():
    abba()
    (r,) = lockdep.reports()
    assert (r.kind, r.lock, r.held) == ("circular", "kvm->lock", "vcpu->mutex")
    assert [(e.src, e.dst) for e in r.chain] == [("kvm->lock", "vcpu->mutex"),
                                                  ("vcpu->mutex", "kvm->lock")]
    data = json.loads(r.to_json())
    assert data["kind"] == "circular" and data["title"] == r.title
    assert data["chain"][0]["where"] == r.chain[0].where
    assert json.loads(r.json) == data


def test_longer_chain_prints_chain_exists_of():
    a, b, c = Mutex("A"), Mutex("B"), Mutex("C")
    for x, y in ((a, b), (b, c), (c, a)):
        with x:
            with y:
                pass
    (r,) = lockdep.reports()
    assert "Chain exists of:\n  A --> B --> C" in str(r)
    assert len(r.chain) == 3 and "-> #2 (C){+.+.}-{3:3}:" in str(r)


def test_recursive_splat():
    x1, x2 = Mutex("X"), Mutex("X")
    with x1:
        with x2:
            pass
    (r,) = lockdep.reports()
    assert r.kind == "recursive" and r.lock == r.held == "X"
    assert "possible recursive locking detected" in str(r)
    assert "May be due to missing lock nesting notation" in str(r)


def test_bad_unlock_splat_and_no_crash():
    m = Mutex("M")
    m.lock()
    m.unlock()
    m.unlock()
    (r,) = lockdep.reports()
    assert r.kind == "bad_unlock" and HERE in r.where
    assert "bad unlock balance detected!" in str(r) and "no locks held by" in str(r)


def test_held_at_exit_names_the_task():
    m = Mutex("held.at.exit")

    def worker():
        m.lock()

    spawn(worker, name="leaky").join()
    (r,) = lockdep.reports()
    assert r.kind == "held_at_exit" and r.task == "leaky"
    assert [h.name for h in r.held_locks] == ["held.at.exit"]
    assert "exiting with locks still held" in str(r)


def test_clean_task_exit_is_silent():
    m = Mutex("clean.exit")

    def worker():
        with m:
            pass

    spawn(worker).join()
    assert lockdep.reports() == []


def test_sleep_in_atomic_and_might_sleep():
    s, m = SpinLock("s"), Mutex("m")
    with s:
        with m:
            pass
    with s:
        lockdep.might_sleep("msleep")
    kinds = [r.kind for r in lockdep.reports()]
    assert kinds == ["sleep_in_atomic", "sleep_in_atomic"]
    assert "sleeping function called from invalid context" in str(lockdep.reports()[0])
    assert lockdep.reports()[1].what == "msleep"


def test_might_sleep_outside_spinlock_is_silent():
    m = Mutex("m")
    with m:
        lockdep.might_sleep("msleep")
    lockdep.might_sleep("msleep")
    assert lockdep.reports() == []


def test_not_held():
    m = Mutex("must.hold")
    m.assert_held()
    (r,) = lockdep.reports()
    assert r.kind == "not_held" and r.lock == "must.hold" and HERE in r.where
    with m:
        m.assert_held()
    assert len(lockdep.reports()) == 1


def test_assert_held_is_per_instance():
    m1, m2 = Mutex("same.class"), Mutex("same.class")
    with m1:
        m2.assert_held()  # holding another instance of the class is not holding m2
    assert [r.kind for r in lockdep.reports()] == ["not_held"]


def test_each_problem_reported_once():
    for _ in range(3):
        abba()
    assert len(lockdep.reports()) == 1


def test_warn_mode_prints_once_to_stderr(capsys):
    lockdep.set_mode("warn")
    abba()
    abba()
    err = capsys.readouterr().err
    assert err.count("possible circular locking dependency detected") == 1


def test_collect_mode_is_silent(capsys):
    abba()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert len(lockdep.reports()) == 1


def test_raise_mode_raises_before_blocking():
    lockdep.set_mode("raise")
    a, b = Mutex("A"), Mutex("B")
    with a:
        with b:
            pass
    with b:
        with pytest.raises(lockdep.LockdepError) as info:
            a.lock()
        assert info.value.report.kind == "circular"
        assert not a.locked()  # the real lock was never taken
    assert "possible circular locking dependency" in str(info.value)


def test_raise_mode_on_a_real_two_thread_abba_reports_instead_of_hanging():
    lockdep.set_mode("raise")
    a, b = Mutex("A"), Mutex("B")
    a_held, b_held = threading.Event(), threading.Event()
    errors = []

    def t1():
        with a:
            a_held.set()
            b_held.wait(5)
            try:
                with b:
                    pass
            except lockdep.LockdepError as e:
                errors.append(e)

    def t2():
        a_held.wait(5)
        with b:
            b_held.set()
            try:
                with a:
                    pass
            except lockdep.LockdepError as e:
                errors.append(e)

    th = [threading.Thread(target=f) for f in (t1, t2)]
    for t in th:
        t.start()
    for t in th:
        t.join(10)
    assert not any(t.is_alive() for t in th), "the threads deadlocked"
    assert [e.report.kind for e in errors] == ["circular"]


def test_set_mode_rejects_unknown():
    with pytest.raises(ValueError, match="warn"):
        lockdep.set_mode("loud")


def test_srcu_report_through_primitives():
    srcu, slots = SRCU("kvm->srcu"), Mutex("kvm->slots_lock")
    with slots:
        srcu.synchronize()
    with srcu.read():
        with slots:
            pass
    (r,) = lockdep.reports()
    assert r.kind == "circular" and (r.lock, r.held) == ("kvm->slots_lock", "kvm->srcu")
    text = str(r)
    assert "  rlock(kvm->srcu);" in text and "sync(kvm->srcu);" in text
    assert "kvm->slots_lock -(EN)-> kvm->srcu, synchronize]" in text
    (e,) = [e for e in lockdep.graph().edges if e.dst == "kvm->srcu"]
    assert e.sync and e.src == "kvm->slots_lock" and e.dst_read == 0


def test_depgraph_json_round_trip_and_errors():
    abba()
    g = lockdep.graph()
    assert g.classes == {"kvm->lock": "mutex", "vcpu->mutex": "mutex"}
    g2 = lockdep.DepGraph.from_json(g.to_json())
    assert g2 == g and g2.has_edge("kvm->lock", "vcpu->mutex")
    with pytest.raises(ValueError, match="not JSON"):
        lockdep.DepGraph.from_json("{")
    with pytest.raises(ValueError, match="'classes' and 'edges'"):
        lockdep.DepGraph.from_json("[]")
    with pytest.raises(ValueError, match="edge #0"):
        lockdep.DepGraph.from_json('{"classes": {}, "edges": [{"bogus": 1}]}')


def test_spinlock_under_raw_spinlock_is_invalid_wait_context(raw_nesting):
    from kvmlock.sync import RawSpinLock

    raw, spin = RawSpinLock("pi_wakeup_lock"), SpinLock("kvm->mmu_lock.spin")
    with raw:
        with spin:
            pass
    (r,) = lockdep.reports()
    assert r.kind == "wait_context" and (r.lock, r.held) == ("kvm->mmu_lock.spin", "pi_wakeup_lock")
    assert "BUG: Invalid wait context" in str(r) and HERE in r.where


def test_raw_under_spinlock_and_raw_under_raw_are_fine(raw_nesting):
    from kvmlock.sync import RawSpinLock

    raw1, raw2, spin = RawSpinLock("r1"), RawSpinLock("r2"), SpinLock("s")
    with spin:
        with raw1:
            with raw2:
                pass
    assert lockdep.reports() == []


def test_raw_nesting_is_off_by_default():
    from kvmlock.sync import RawSpinLock

    raw, spin = RawSpinLock("r"), SpinLock("s")
    with raw:
        with spin:
            pass
    assert lockdep.reports() == []
    with pytest.raises(TypeError, match="bool"):
        lockdep.prove_raw_nesting("yes")


def _line_of(fn, text):
    """The line number of the line in ``fn``'s source containing ``text``."""
    import inspect

    lines, first = inspect.getsourcelines(fn)
    (i,) = [i for i, line in enumerate(lines) if text in line]
    return first + i


def _take_in_two_places(a, c, take):
    """``first`` sees the chain [a] first; ``second`` takes ``a`` from the chain cache, then
    closes a -> c -> a, so its report lists ``a`` as held."""

    def first():
        with take(a):  # first sight of the chain [a]
            pass

    def inverts():
        with take(c):
            with take(a):  # c -> a
                pass

    def second():
        with take(a):  # a cached chain, taken here
            with take(c):
                pass

    first()
    inverts()
    second()
    (r,) = lockdep.reports()
    assert r.kind == "circular"
    return r, {name: _line_of(fn, text) for name, fn, text in (
        ("first", first, "first sight"), ("inverts", inverts, "c -> a"),
        ("second", second, "a cached chain"))}


def _threading_pair():
    with lockdep.instrument_threading():
        a = threading.Lock()
        c = threading.Lock()
    return a, c


@pytest.mark.parametrize("pair, take", [
    (lambda: (Mutex("held_at.a"), Mutex("held_at.c")), lambda m: m),
    (lambda: (RWSemaphore("held_at.a"), RWSemaphore("held_at.c")), lambda s: s.read()),
    (_threading_pair, lambda lk: lk),
], ids=["mutex", "rwsem-read", "threading"])
def test_a_held_lock_is_shown_where_it_was_taken_not_where_its_chain_was_first_seen(pair, take):
    r, line = _take_in_two_places(*pair(), take)
    here = f"test_reports.py:{line['second']}"
    assert r.held_where.endswith(here) and r.held_locks[0].where.endswith(here)
    assert f"{here}\n" in str(r)  # the "at:" of the held lock
    assert f"test_reports.py:{line['first']}" not in str(r)  # where [a] was first seen
    # a dependency still says where it was made: c -> a in inverts()
    assert r.chain[0].where.endswith(f"test_reports.py:{line['inverts']}")
