"""Unmodified threading programs under the explorer: each finding caught, each near-miss clean."""

from __future__ import annotations

import _thread
import concurrent.futures
import queue
import sys
import threading
import time

import pytest

from kvmlock import explore, lockdep
from kvmlock.explore import pythreads

from . import programs, threadprogs


def test_threading_abba_is_reported_by_lockdep_and_as_a_deadlock():
    res = explore.check(threadprogs.abba(), strategy="dpor")
    assert res.failure is not None and res.failure.kind == "lockdep"
    assert res.failure.lockdep_reports[0].kind == "circular"
    res = explore.check(threadprogs.abba(), strategy="dpor", lockdep=False)
    assert res.failure is not None and res.failure.kind == "deadlock"
    assert "every live task is blocked" in res.failure.message


def test_threading_locks_taken_in_one_order_are_clean_and_exhausted():
    res = explore.check(threadprogs.abba(broken=False), strategy="dpor")
    assert res.ok and res.exhausted and res.runs == 2


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_threading_locked_counter_has_the_counts_of_the_kvmlock_sync_version(strategy):
    plain = explore.check(threadprogs.locked_counter(2, 2), strategy=strategy,
                          stop_on_first=False)
    sync = explore.check(programs.counter(2, 2), strategy=strategy, stop_on_first=False)
    assert plain.ok and sync.ok and plain.exhausted and sync.exhausted
    assert plain.runs == sync.runs and plain.steps == sync.steps
    if strategy == "dpor":
        assert plain.runs == 6  # 4!/(2!2!) orders of the critical sections


def test_threading_locked_counter_3x3_has_exactly_1680_traces():
    res = explore.check(threadprogs.locked_counter(3, 3), strategy="dpor", stop_on_first=False)
    assert res.ok and res.exhausted and res.runs == 1680  # 9!/(3!)^3


def test_a_lock_class_bound_before_the_exploration_is_explored_too():
    """``from threading import Lock`` at import time: the name in the body's module is
    swapped for the exploration and put back."""
    res = explore.check(threadprogs.locked_counter(2, 2, imported=True), stop_on_first=False)
    assert res.ok and res.runs == 6
    # put back: the real object (a function up to 3.12; CPython 3.13 made threading.Lock the
    # class _thread.lock)
    real = _thread.LockType if sys.version_info >= (3, 13) else _thread.allocate_lock
    assert threadprogs.ImportedLock is real


@pytest.mark.memory_tracing
def test_lost_update_on_plain_attributes_needs_memory_and_is_then_found():
    assert explore.check(threadprogs.lost_update(), memory=False).ok  # invisible without it
    res = explore.check(threadprogs.lost_update(), memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"
    table = res.failure.trace_table()
    assert "store Account.balance" in table and "load Account.balance" in table


@pytest.mark.memory_tracing
def test_lost_update_under_a_lock_is_clean_with_memory():
    res = explore.check(threadprogs.lost_update(locked=True), memory=True)
    assert res.ok and res.exhausted


def test_queue_pipeline_is_clean_and_the_polling_consumer_is_caught():
    res = explore.check(threadprogs.pipeline(), strategy="dpor")
    # one producer, one consumer: their puts and gets commute but for the item handed over
    # (and the room made), so this is one trace (see test_queues.py)
    assert res.ok and res.exhausted and res.runs == 1
    res = explore.check(threadprogs.pipeline(broken=True), strategy="dpor")
    assert res.failure is not None and res.failure.kind == "assertion"


def test_lost_wakeup_on_a_condition_is_a_deadlock_and_the_loop_under_the_lock_is_clean():
    res = explore.check(threadprogs.lost_wakeup(), strategy="dpor")
    assert res.failure is not None and res.failure.kind == "deadlock"
    assert "condition waiter" in res.failure.message
    res = explore.check(threadprogs.lost_wakeup(broken=False), strategy="dpor")
    assert res.ok and res.exhausted


def test_condition_waiter_must_recheck_after_a_notify():
    """A notify wakes a Condition waiter; it does not make the waiter's condition true."""
    res = explore.check(threadprogs.recheck_after_wait(loop=False), strategy="dpor")
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "woke with 1 item(s)" in res.failure.message
    res = explore.check(threadprogs.recheck_after_wait(loop=True), strategy="dpor")
    assert res.ok and res.exhausted


def _originals():
    return (threading.Lock, threading.RLock, threading._allocate_lock, threading.get_ident,
            threading.current_thread, threading.local, threading.Thread.start,
            threading.Thread.join, threading.Thread.is_alive, time.sleep, queue.SimpleQueue,
            threading._time, queue.time, threading._newname,
            *[vars(queue.Queue)[m] for m in ("__init__", "put", "get", "qsize", "empty", "full",
                                             "task_done", "join")],
            *[vars(queue._PySimpleQueue)[m] for m in ("__init__", "put", "get", "qsize",
                                                      "empty")])


def test_threading_is_restored_after_every_way_out():
    before = _originals()
    explore.check(threadprogs.locked_counter(2, 1))
    assert _originals() == before
    explore.check(threadprogs.abba())  # a failure
    assert _originals() == before

    def raises_at_once():
        threading.Lock()
        raise KeyError("boom")

    res = explore.check(raises_at_once)
    assert res.failure is not None and res.failure.kind == "exception"
    assert _originals() == before
    with pytest.raises(ValueError):
        explore.replay(threadprogs.abba(), "5")  # not a schedule of this body
    assert _originals() == before
    res = explore.replay(threadprogs.abba(), explore.check(threadprogs.abba()).failure.schedule)
    assert res.failure is not None
    res.failure.trace_table()  # drawn later, on demand: substituted again, then restored
    assert _originals() == before
    assert not pythreads.substituted()


def test_threading_is_restored_when_a_check_is_stopped_from_outside():
    """Blocked in a call the explorer does not run, stopped at the timeout, a hang, Ctrl-C:
    each ends the check with threading as it was."""
    before = _originals()
    held = _thread.allocate_lock()  # a real lock, held here: the body can never take it
    held.acquire()

    def blocked():
        with threading.Lock():
            held.acquire()

    def spins():
        threading.Lock()
        while True:
            pass

    def interrupted():
        threading.Lock()
        raise KeyboardInterrupt

    try:
        res = explore.check(blocked, stall=0.3)
        assert res.failure is not None and res.failure.kind == "blocked"
        assert _originals() == before and not pythreads.substituted()
        res = explore.replay(blocked, "", timeout=0.3, stall=None)
        assert res.failure is not None and res.failure.kind == "blocked"
        assert _originals() == before and not pythreads.substituted()
    finally:
        held.release()  # the abandoned executions wake and unwind
    res = explore.check(spins, stall=0.3)
    assert res.failure is not None and res.failure.kind == "hang"
    assert _originals() == before and not pythreads.substituted()
    res = explore.check(spins, timeout=0.3, stall=None)
    assert res.stopped == "timeout" and not res.exhausted
    assert _originals() == before and not pythreads.substituted()
    with pytest.raises(KeyboardInterrupt):
        explore.check(interrupted)
    assert _originals() == before and not pythreads.substituted()


def test_other_os_threads_get_real_threading_during_an_exploration():
    seen: list[object] = []
    stop = threading.Event()
    started = threading.Event()

    def outsider():
        started.set()
        while not stop.is_set():
            seen.append(type(threading.Lock()))
            seen.append(threading.get_ident() == _thread.get_ident())
            time.sleep(0)

    th = threading.Thread(target=outsider)
    th.start()
    started.wait()
    try:
        res = explore.check(threadprogs.locked_counter(3, 3), stop_on_first=False)
    finally:
        stop.set()
        th.join()
    assert res.ok and res.runs == 1680
    assert seen and set(seen) <= {_thread.LockType, True}


def test_lockdep_names_threading_lock_classes_as_kvmlock_lockdep_does():
    """The same ABBA program, once on real threads under instrument_threading (it may or may
    not interleave, lockdep reports the inversion either way) and once explored: the same
    report, naming the same two classes (which one is taken and which held depends on which
    thread came second, on real threads)."""
    body = threadprogs.abba()
    with lockdep.instrument_threading():
        body()
    real = [(r.kind, r.lock, r.held) for r in lockdep.reports()]
    res = explore.check(body)
    assert res.failure is not None and res.failure.kind == "lockdep"
    rep = res.failure.lockdep_reports[0]
    ((kind, lock, held),) = real
    assert (kind, {lock, held}) == (rep.kind, {rep.lock, rep.held})
    assert rep.lock.endswith(".a") and rep.held.endswith(".b")


# --------------------------------------------------------------------------- more of threading
def _sem_body(bound: int, broken: bool):
    def body():
        sem = threading.Semaphore(bound)
        inside = {"n": 0, "max": 0}
        lock = threading.Lock()

        def w():
            if broken:
                sem.release()  # a stray release: lets a third thread in
            with sem:
                with lock:
                    inside["n"] += 1
                    inside["max"] = max(inside["max"], inside["n"])
                with lock:
                    inside["n"] -= 1

        threadprogs.run_all(w, w, w)
        assert inside["max"] <= bound, inside

    return body


def test_semaphore_bounds_the_section_and_an_extra_release_is_caught():
    assert explore.check(_sem_body(2, broken=False)).ok
    res = explore.check(_sem_body(2, broken=True))
    assert res.failure is not None and res.failure.kind == "assertion"


def test_bounded_semaphore_over_release_raises():
    def body():
        s = threading.BoundedSemaphore(1)

        def w():
            s.acquire()
            s.release()
            s.release()

        threadprogs.run_all(w)

    res = explore.check(body)
    assert res.failure is not None and "ValueError" in res.failure.message


def _event_body(broken: bool):
    def body():
        ev = threading.Event()
        data: list[int] = []

        def producer():
            if broken:
                ev.set()
                data.append(1)
            else:
                data.append(1)
                ev.set()

        def consumer():
            ev.wait()
            with threading.Lock():  # a visible step between the wait and the read
                pass
            assert data == [1], data

        threadprogs.run_all(producer, consumer)

    return body


@pytest.mark.memory_tracing
def test_event_publishes_after_set_and_set_before_publishing_is_caught():
    assert explore.check(_event_body(False), memory=True).ok
    res = explore.check(_event_body(True), memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"


def test_barrier_rlock_local_and_thread_identity():
    def body():
        barrier = threading.Barrier(2)
        r = threading.RLock()
        loc = threading.local()
        names: dict[int, str] = {}

        def w(i):
            loc.i = i
            with r:
                with r:  # re-entry is not a second acquire
                    names[threading.get_ident()] = threading.current_thread().name
            barrier.wait()
            assert loc.i == i

        ts = [threading.Thread(target=w, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not any(t.is_alive() for t in ts)
        assert sorted(names.values()) == ["Thread-1 (w)", "Thread-2 (w)"]

    res = explore.check(body, stop_on_first=False)
    assert res.ok and res.exhausted and res.runs > 1


def test_barrier_with_a_missing_party_deadlocks():
    def body():
        barrier = threading.Barrier(3)
        threadprogs.run_all(barrier.wait, barrier.wait)

    res = explore.check(body)
    assert res.failure is not None and res.failure.kind == "deadlock"


def test_timer_fires_or_is_cancelled_and_both_orders_are_explored():
    def body():
        fired: list[int] = []
        t = threading.Timer(5.0, lambda: fired.append(1))
        t.start()
        t.cancel()
        t.join()
        assert not fired, "the timer fired after cancel()"

    def fine():
        fired: list[int] = []
        t = threading.Timer(5.0, lambda: fired.append(1))
        t.start()
        t.join()
        assert fired == [1]

    assert explore.check(fine).ok
    res = explore.check(body)
    # cancel() may come after the interval ran out: the timer fired first
    assert res.failure is not None and res.failure.kind == "assertion"


@pytest.mark.parametrize("name", ["Queue", "LifoQueue", "PriorityQueue", "SimpleQueue"])
def test_queue_classes_hand_items_over(name):
    # The class is looked up when the body runs, as a program naming ``queue.X`` does: a
    # class object taken at import time would be the real (C) SimpleQueue, which no check
    # replaces. The consumer starts first, so its get can come before any put: a queue the
    # explorer does not run would block the execution there.
    def body():
        q = getattr(queue, name)()
        got: list[int] = []

        def prod():
            for i in (1, 2):
                q.put(i)

        def cons():
            for _ in range(2):
                got.append(q.get())

        threadprogs.run_all(cons, prod)
        assert sorted(got) == [1, 2]

    res = explore.check(body, stop_on_first=False)
    assert res.ok and res.exhausted


def test_queue_get_with_timeout_runs_on_a_virtual_clock():
    def body():
        q: queue.Queue = queue.Queue()
        try:
            q.get(timeout=30)  # nobody puts: times out at once on the explorer's clock
        except queue.Empty:
            return
        raise AssertionError("unreachable")

    t0 = time.monotonic()
    res = explore.check(body)
    assert res.ok and time.monotonic() - t0 < 5


@pytest.mark.memory_tracing
def test_thread_pool_executor_runs_explored():
    def fine():
        counter = {"n": 0}
        lock = threading.Lock()

        def job():
            with lock:
                counter["n"] += 1
            return 1

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futs = [pool.submit(job) for _ in range(2)]
            assert sum(f.result() for f in futs) == 2
        assert counter["n"] == 2

    res = explore.check(fine, max_runs=200)
    assert res.ok and res.runs > 1

    def racy():
        counter = {"n": 0}

        def job():
            counter["n"] = counter["n"] + 1

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for _ in range(2):
                pool.submit(job)
        assert counter["n"] == 2, counter

    res = explore.check(racy, memory=True, max_runs=2000)
    assert res.failure is not None and res.failure.kind == "assertion"


def test_a_thread_that_raises_fails_the_execution():
    def body():
        def bad():
            raise RuntimeError("worker died")

        threadprogs.run_all(bad)

    res = explore.check(body)
    assert res.failure is not None and "worker died" in res.failure.message


def test_sleep_polling_loop_yields_instead_of_spinning():
    def body():
        flag = {"set": False}

        def setter():
            time.sleep(0.5)
            flag["set"] = True

        t = threading.Thread(target=setter)
        t.start()
        while not flag["set"]:
            time.sleep(0.01)
        t.join()

    res = explore.check(body, stop_on_first=False)
    assert res.ok and res.exhausted


@pytest.mark.memory_tracing
def test_parallel_workers_explore_plain_threading_too():
    res = explore.check(threadprogs.locked_counter(2, 2), workers=2, stop_on_first=False)
    assert res.ok and res.exhausted and res.runs == 6
    res = explore.check(threadprogs.lost_update(), workers=2, memory=True)
    assert res.failure is not None and res.failure.kind == "assertion"


def test_with_lockdep_off_a_threading_deadlock_still_names_the_locks_each_task_holds():
    """lockdep=False explores threading locks without validating them: the same executions
    as with lockdep, no lockdep findings, and a deadlock message that names what each
    blocked task holds."""
    res = explore.check(threadprogs.abba(), strategy="dpor", lockdep=False)
    f = res.failure
    assert f is not None and f.kind == "deadlock" and f.lockdep_reports == []
    blocked = [ln for ln in f.message.splitlines() if "waits for: lock" in ln]
    assert len(blocked) == 2
    assert all("; holds " in ln for ln in blocked), f.message
    held = sorted(ln.split("; holds ")[1] for ln in blocked)
    waited = sorted(ln.split("waits for: lock ")[1].split(" (held by")[0] for ln in blocked)
    assert held == waited == ["abba.body.a", "abba.body.b"], f.message  # a cycle
    on = explore.check(threadprogs.abba(), strategy="dpor", lockdep=False,
                       stop_on_first=False)
    assert [x.kind for x in on.failures] == ["deadlock"]


def test_with_lockdep_off_threading_programs_keep_their_counts_and_clean_ones_stay_clean():
    for strategy in ("dpor", "dfs"):
        off = explore.check(threadprogs.locked_counter(2, 2), strategy=strategy,
                            stop_on_first=False, lockdep=False)
        on = explore.check(threadprogs.locked_counter(2, 2), strategy=strategy,
                           stop_on_first=False)
        assert off.ok and off.exhausted and (off.runs, off.steps) == (on.runs, on.steps)
    clean = explore.check(threadprogs.abba(broken=False), strategy="dpor", lockdep=False)
    assert clean.ok and clean.exhausted and clean.runs == 2


@pytest.mark.parametrize("lockdep_on", [True, False])
def test_explored_locks_check_acquire_arguments_as_cpython_does(lockdep_on):
    """Bad arguments raise the real lock's errors; the bounded forms a program may use still
    work (and an RLock's re-entry checks them too). A non-owner sees a recursion count of 0."""
    seen: list[object] = []

    def body():
        lk, rl = threading.Lock(), threading.RLock()
        for lock in (lk, rl):
            for args, kw in (((), {"timeout": -5}), ((False, 1), {})):
                with pytest.raises(ValueError):
                    lock.acquire(*args, **kw)
            assert lock.acquire(True, 0.5) and lock.acquire(False) is (lock is rl)
            if lock is rl:
                with pytest.raises(ValueError):  # re-entry checks the arguments first
                    rl.acquire(timeout=-2)
                rl.release()
            lock.release()
        with rl:
            t = threading.Thread(target=lambda: seen.append(rl._recursion_count()))
            t.start()
            t.join()
            seen.append(rl._recursion_count())

    res = explore.check(body, strategy="dpor", lockdep=lockdep_on)
    assert res.ok and res.exhausted, str(res)
    assert seen[-2:] == [0, 1]
