"""Plain threading programs: instrumented Lock/RLock are validated by creation site."""

import threading
import time

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
    assert {r.lock, r.held} == {"make_pair.a", "make_pair.b"}  # named after the variable
    assert all("test_instrument.py" in e.where for e in r.chain)
    # each dependency carries the call path that made it (t1's and t2's bodies)
    assert {e.stack[0].split(" in ")[1] for e in r.chain} == {"t1", "t2"}
    assert "test_instrument.py" in str(r) and " in t1" in str(r)


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


def test_two_locks_from_one_site_are_one_class_ordered_by_instance():
    """Same-class locks nested in one order are fine (as concurrent.futures.wait() takes its
    futures' conditions); the same two taken the other way round are an instance ABBA."""
    with lockdep.instrument_threading():
        locks = [threading.Lock() for _ in range(3)]
    for _ in range(2):
        with locks[0]:
            with locks[1]:
                with locks[2]:
                    pass
    assert lockdep.reports() == []
    assert len(lockdep.graph().classes) == 1
    with locks[2]:  # closes 0 -> 1 -> 2 -> 0 through a third instance
        with locks[0]:
            pass
    (r,) = lockdep.reports()
    assert r.kind == "circular" and "different locks" in str(r)
    assert len(r.chain) == 2 and r.lock != r.held  # 0 -> 2 was recorded directly


def test_same_class_instances_taken_both_ways_in_two_threads_is_reported():
    class Account:
        def __init__(self) -> None:
            self._lock = threading.Lock()

    with lockdep.instrument_threading():
        a, b = Account(), Account()

    def transfer(x: Account, y: Account) -> None:
        with x._lock:
            with y._lock:
                pass

    for args in ((a, b), (b, a)):
        th = threading.Thread(target=transfer, args=args)
        th.start()
        th.join()
    (r,) = lockdep.reports()
    assert r.kind == "circular" and r.lock.startswith("Account._lock[")
    assert all(e.stack and " in transfer" in e.stack[0] for e in r.chain)


def test_kvmlock_sync_keeps_strict_class_semantics():
    from kvmlock.sync import Mutex

    x, y = Mutex("acct"), Mutex("acct")
    with x:
        with y:
            pass
    assert [r.kind for r in lockdep.reports()] == ["recursive"]


def test_many_same_class_locks_held_at_once_stay_validated():
    """A wait() on 60 futures holds 60 conditions; validation must stay on after it."""
    with lockdep.instrument_threading():
        locks = [threading.RLock() for _ in range(64)]
        a, b = make_pair()
    for lk in locks:
        lk.acquire()
    for lk in reversed(locks):
        lk.release()
    assert lockdep.enabled() and lockdep.reports() == []
    with a:
        with b:
            pass
    with b:
        with a:
            pass
    assert [r.kind for r in lockdep.reports()] == ["circular"]


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


def test_releasing_an_unlocked_lock_raises_as_plain_python_does():
    """The program already gets the RuntimeError a plain lock raises; lockdep adds nothing."""
    with lockdep.instrument_threading():
        lk = threading.Lock()
        rl = threading.RLock()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        lk.release()
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        rl.release()
    assert lockdep.reports() == []


def test_lock_used_as_a_signal_is_not_recursive_locking():
    """Take, block on it again, another thread releases: a signal, not a self-deadlock."""
    with lockdep.instrument_threading():
        done = threading.Lock()
    done.acquire()
    th = threading.Timer(0.05, done.release)
    th.start()
    done.acquire()  # waits for the timer thread's release
    done.release()
    th.join()
    assert lockdep.reports() == [] and lockdep.held_locks() == []


def test_a_real_self_deadlock_on_a_lock_is_still_reported(monkeypatch):
    from kvmlock.lockdep import threading_instr

    monkeypatch.setattr(threading_instr, "SIGNAL_WAIT", 0.05)
    with lockdep.instrument_threading():
        lk = threading.Lock()
    lk.acquire()
    th = threading.Timer(0.5, lk.release)  # frees the test after the report
    th.start()
    lk.acquire()
    lk.release()
    th.join()
    assert [r.kind for r in lockdep.reports()] == ["recursive"]


def test_lock_collected_while_held_leaves_the_stack():
    import gc

    with lockdep.instrument_threading():
        outer, inner = make_pair()
    outer.acquire()
    del outer
    gc.collect()
    assert lockdep.held_locks() == []
    with inner:  # no dependency from the dead lock
        pass
    assert lockdep.graph().edges == []


def test_at_fork_reinit_drops_the_hold():
    with lockdep.instrument_threading():
        lk = threading.Lock()
        rl = threading.RLock()
    lk.acquire()
    rl.acquire()
    lk._at_fork_reinit()
    rl._at_fork_reinit()
    assert lockdep.held_locks() == [] and not lk.locked() and rl._recursion_count() == 0
    with lk:
        with rl:
            pass
    assert lockdep.reports() == []


@pytest.mark.parametrize("make", ["Lock", "RLock"])
def test_checked_locks_behave_like_plain_ones(make):
    import copy
    import pickle
    import re

    plain = getattr(threading, make)()
    with lockdep.instrument_threading():
        checked = getattr(threading, make)()
    assert type(checked) is not type(plain)  # really instrumented
    for lk in (plain, checked):
        shape = re.sub(r"0x[0-9a-f]+", "X", repr(lk))
        if lk is plain:
            want = shape
        assert shape == want
        for kwargs, exc in (({"timeout": -5}, ValueError), ({"blocking": False, "timeout": 1},
                                                             ValueError),
                            ({"timeout": 1e100}, OverflowError)):
            with pytest.raises(exc) as got:
                lk.acquire(**kwargs)
            if lk is plain:
                msgs = {exc: str(got.value)}
            assert str(got.value) == msgs.get(exc, str(got.value))
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(lk)
        with pytest.raises(TypeError, match="cannot pickle"):
            copy.copy(lk)
        try:
            made = type(type(lk)())  # a new lock of the same type, or "cannot create"
        except TypeError as exc:
            made = str(exc)  # the whole message: it names the type, the real one
        if lk is plain:
            plain_made = made
        assert made is type(lk) if plain_made is type(plain) else made == plain_made
        assert lk.acquire(timeout=0.01) is True
        lk.release()
        assert lk.__enter__() is True
        lk.release()
    if make == "RLock":
        checked.acquire()
        checked.acquire()
        assert checked._recursion_count() == 2 and checked._is_owned()
        saved = checked._release_save()
        assert checked._recursion_count() == 0 and lockdep.held_locks() == []
        checked._acquire_restore(saved)
        assert checked._recursion_count() == 2 and len(lockdep.held_locks()) == 1
        checked.release()
        checked.release()
        with pytest.raises(RuntimeError):
            checked._release_save()
    assert lockdep.reports() == []


def test_threading_module_looks_the_same_under_instrumentation():
    with lockdep.instrument_threading():
        assert threading.Lock.__module__ == "_thread" and threading.RLock.__module__ == "threading"
        assert threading.RLock.__name__ == "RLock"


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
    assert {"make_pair.a", "make_pair.b"} <= names
    # two calls on one line: named by line and column, and still two classes
    assert len([n for n in names if "test_instrument.py:" in n]) == 2
    assert lockdep.reports() == []


class Shop:
    def __init__(self) -> None:
        self._lock = threading.Lock()


shop_lock = threading.Lock()  # (made before instrumentation: stays plain)


def test_attribute_locks_are_named_after_their_class():
    from kvmlock.lockdep import naming

    with lockdep.instrument_threading():
        s = Shop()
        line = open(__file__).read().splitlines().index(
            "shop_lock = threading.Lock()  # (made before instrumentation: stays plain)") + 1
        module_level = naming.class_name(("shop",), (__file__, line, 13, "<module>"))
    with s._lock:
        pass
    assert "Shop._lock" in lockdep.graph().classes
    assert module_level == "shop_lock"  # a module global is its own name


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
    assert r.kind == "held_at_exit" and r.task == "leaker"
    assert r.lock == "test_plain_thread_ending_with_a_lock_held_is_reported.leaked"


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


def test_a_child_forked_while_another_thread_validates_can_still_validate():
    """The fork happens while another thread is inside validation (holding the graph lock):
    the child must not wait forever for a lock whose holder does not exist there."""
    import os
    import time

    from kvmlock.lockdep import core

    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    with lockdep.instrument_threading():
        a, b = make_pair()
    S = core._state()
    inside, leave = threading.Event(), threading.Event()

    def validating():
        with S.lock:  # as a thread in the middle of a chain-cache miss
            inside.set()
            leave.wait()

    th = threading.Thread(target=validating)
    th.start()
    inside.wait()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            with a:
                with b:  # a new chain: needs the graph lock
                    status = 0
        finally:
            os._exit(status)
    leave.set()
    th.join()
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the graph lock")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0


def test_plain_thread_ending_with_a_kvmlock_mutex_held_is_reported():
    """No instrumentation, no kvmlock.spawn: a plain threading.Thread is still checked."""
    from kvmlock.sync import Mutex

    m = Mutex("leaked.mutex")
    fine = Mutex("fine.mutex")
    assert not lockdep.threading_instrumented()
    th = threading.Thread(target=m.lock, name="plain-leaker")
    th.start()
    th.join()

    def tidy():
        with fine:
            pass

    th2 = threading.Thread(target=tidy)
    th2.start()
    th2.join()
    (r,) = lockdep.reports()
    assert r.kind == "held_at_exit" and r.task == "plain-leaker" and r.lock == "leaked.mutex"


def test_logging_module_lock_is_adopted_and_given_back():
    import logging

    from kvmlock.lockdep.threading_instr import CheckedRLock

    raw = logging._lock
    assert type(raw) is not CheckedRLock  # made when logging was imported, long ago
    with lockdep.instrument_threading():
        checked = logging._lock
        assert isinstance(checked, CheckedRLock) and checked._lock is raw  # one real lock
        with checked:
            assert raw._is_owned()  # so a thread holding the raw one still excludes us
            assert [h.name for h in lockdep.held_locks()] == ["_lock"]
        raw.acquire()  # taken through the raw lock (fetched before the swap) ...
        checked.release()  # ... and released through the adopted one: still fine
        assert not raw._is_owned()
    assert logging._lock is raw


def test_a_module_lock_held_at_instrumentation_is_left_alone():
    import logging

    raw = logging._lock
    with raw:
        with lockdep.instrument_threading():
            assert logging._lock is raw  # nobody could tell lockdep of its release
    assert lockdep.reports() == []


@pytest.mark.parametrize("leak", [True, False])
def test_a_thread_started_by_start_new_thread_is_checked_at_its_end(leak):
    import _thread

    from kvmlock.sync import Mutex

    with lockdep.instrument_threading():
        plain = threading.Lock()
    m = Mutex("raw_thread_mutex")
    done = threading.Event()

    def body(n, *, tidy):
        plain.acquire()
        m.lock()
        if tidy:
            m.unlock()
            plain.release()
        done.set()

    _thread.start_new_thread(body, (1,), {"tidy": not leak})
    assert done.wait(5)
    for _ in range(100):  # the end-of-thread check runs just after body returns
        if not leak or lockdep.reports():
            break
        time.sleep(0.01)
    time.sleep(0.05)
    if leak:
        (r,) = lockdep.reports()
        assert r.kind == "held_at_exit" and r.task.endswith("body")
        assert [h.name for h in r.held_locks] == [
            "test_a_thread_started_by_start_new_thread_is_checked_at_its_end.plain",
            "raw_thread_mutex"]
    else:
        assert lockdep.reports() == []


def test_start_new_thread_keeps_its_errors():
    import _thread

    with pytest.raises(TypeError, match="first arg must be callable"):
        _thread.start_new_thread(1, ())
    with pytest.raises(TypeError, match="2nd arg must be a tuple"):
        _thread.start_new_thread(print, [])
    with pytest.raises(TypeError, match="optional 3rd arg must be a dictionary"):
        _thread.start_new_thread(print, (), [])


def test_a_thread_ending_with_a_lock_handed_between_threads_is_silent():
    # CPython's lock_tests.test_reacquire: a thread takes a Lock, another releases it, the
    # first takes it again and ends; the Lock is a signal, owned by nobody
    import _thread

    with lockdep.instrument_threading():
        lock = threading.Lock()
    phase, done = [], threading.Event()

    def f():
        lock.acquire()
        phase.append(1)
        lock.acquire()  # waits for the main thread's release
        phase.append(2)
        done.set()

    _thread.start_new_thread(f, ())
    while not phase:
        time.sleep(0.001)
    lock.release()
    assert done.wait(5)
    time.sleep(0.05)
    assert lockdep.reports() == []


def test_the_instrumented_lock_type_is_named_as_the_real_one():
    """CPython's test_threading checks type(lock)() against a message built from
    type(lock).__module__ and __name__; both must match the error the type raises."""
    real = type(threading.Lock())
    try:
        real_made = real()  # CPython 3.13 on: a new lock; up to 3.12: "cannot create"
    except TypeError:
        real_made = None
    with lockdep.instrument_threading():
        lk = threading.Lock()
        tp = type(lk)
        assert tp is not real
        if real_made is not None:
            made = tp()
            assert type(made) is tp and type(real_made) is real
            got = None
        else:
            with pytest.raises(TypeError) as got:
                tp()
    assert (tp.__module__, tp.__name__) == (real.__module__, real.__name__)
    if got is not None:
        assert str(got.value) == f"cannot create '{tp.__module__}.{tp.__name__}' instances"
