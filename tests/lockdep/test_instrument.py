"""Plain threading programs: instrumented Lock/RLock are validated by creation site."""

import threading

import pytest

from kvmlock import lockdep


def make_pair():
    a = threading.Lock()  # one class: this line
    b = threading.Lock()  # another class: this line
    return a, b


def test_abba_in_a_plain_threading_program_is_caught():
    with lockdep.instrument_threading():
        a, b = make_pair()

    def t1():
        with a:
            with b:
                pass

    def t2():
        with b:
            with a:
                pass

    for fn in (t1, t2):  # one after the other: the order alone is the bug
        th = threading.Thread(target=fn)
        th.start()
        th.join()
    (r,) = lockdep.reports()
    assert r.kind == "circular"
    assert "test_instrument.py:" in r.lock and "test_instrument.py:" in r.held
    assert all("test_instrument.py" in e.where for e in r.chain)


def test_same_order_in_threads_is_silent():
    with lockdep.instrument_threading():
        a, b = make_pair()

    def t():
        for _ in range(20):
            with a:
                with b:
                    pass

    ths = [threading.Thread(target=t) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert lockdep.reports() == []
    assert len(lockdep.graph().edges) == 1


def test_rlock_reentry_is_not_recursive_locking():
    with lockdep.instrument_threading():
        r = threading.RLock()
        other = threading.Lock()
    with r:
        with r:
            with other:
                with r:
                    pass
    assert lockdep.reports() == []


def test_two_locks_from_one_site_are_one_class():
    with lockdep.instrument_threading():
        locks = [threading.Lock() for _ in range(2)]
    with locks[0]:
        with locks[1]:
            pass
    (r,) = lockdep.reports()
    assert r.kind == "recursive"


def test_condition_and_event_keep_working():
    with lockdep.instrument_threading():
        cond = threading.Condition()
        ev = threading.Event()
        box = []

        def producer():
            with cond:
                box.append(1)
                cond.notify()
            ev.set()

        with cond:
            th = threading.Thread(target=producer)
            th.start()
            assert cond.wait_for(lambda: box, timeout=5)
        assert ev.wait(5)
        th.join()
    assert lockdep.reports() == []


def test_lock_released_by_another_thread_is_not_a_bad_unlock():
    with lockdep.instrument_threading():
        gate = threading.Lock()
    gate.acquire()
    th = threading.Thread(target=gate.release)  # legal for threading.Lock
    th.start()
    th.join()
    assert not gate.locked()
    assert lockdep.held_locks() == []
    assert lockdep.reports() == []


def test_real_bad_release_still_raises_and_is_reported():
    with lockdep.instrument_threading():
        lk = threading.Lock()
    with pytest.raises(RuntimeError):
        lk.release()
    assert [r.kind for r in lockdep.reports()] == ["bad_unlock"]


def test_nonblocking_acquire_is_a_trylock():
    with lockdep.instrument_threading():
        a, b = make_pair()
    with a:
        with b:
            pass
    with b:
        assert a.acquire(blocking=False)
        a.release()
        assert a.acquire(timeout=1)
        a.release()
    assert lockdep.reports() == []


def test_instrumentation_is_undone():
    orig = threading.Lock
    with lockdep.instrument_threading():
        assert threading.Lock is not orig and lockdep.threading_instrumented()
        inner = lockdep.instrument_threading()
        inner.stop()
        assert lockdep.threading_instrumented()  # nested use keeps the outer one alive
    assert threading.Lock is orig and not lockdep.threading_instrumented()
    assert type(threading.Lock()).__name__ == "lock"


def test_kvmlock_primitives_stay_raw_under_instrumentation():
    from kvmlock.sync import Mutex

    with lockdep.instrument_threading():
        m = Mutex("m")
    assert type(m._cell).__name__ == "lock"


def test_class_names_follow_the_assignment():
    with lockdep.instrument_threading():
        a, b = make_pair()
        pair = [threading.Lock(), threading.Lock()]
    with a:
        with b:
            with pair[0]:
                with pair[1]:
                    pass
    names = set(lockdep.graph().classes)
    assert any(n.startswith("a@") and "test_instrument.py:" in n for n in names)
    assert any(n.startswith("b@") for n in names)
    # two calls on one line: named by line and column, and still two classes
    assert len([n for n in names if "@" not in n]) == 2 and lockdep.reports() == []


def test_plain_thread_ending_with_a_lock_held_is_reported():
    with lockdep.instrument_threading():
        leaked = threading.Lock()
        th = threading.Thread(target=leaked.acquire, name="leaker")
        th.start()
        th.join()
        fine = threading.Lock()

        def tidy():
            with fine:
                pass

        th2 = threading.Thread(target=tidy)
        th2.start()
        th2.join()
    (r,) = lockdep.reports()
    assert r.kind == "held_at_exit" and r.task == "leaker" and r.lock.startswith("leaked@")


def test_isinstance_against_threading_lock_still_works():
    """From Python 3.13 on threading.Lock is a class programs may test against; while
    instrumented it must still accept plain and validated locks (and nothing else)."""
    import _thread

    with lockdep.instrument_threading():
        mine = threading.Lock()
        assert isinstance(mine, threading.Lock)
        assert isinstance(_thread.allocate_lock(), threading.Lock)
        assert not isinstance(threading.RLock(), threading.Lock)
        assert not isinstance(object(), threading.Lock)
        assert issubclass(type(mine), threading.Lock)
