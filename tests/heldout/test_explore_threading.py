"""Held-out: unmodified threading programs under ``explore.check``.

Every expected verdict and count below was derived from Python's threading semantics and the
explorer's documented model (one execution per Mazurkiewicz trace for dpor; a lock operation
is one visible operation; reads of one location commute), before running the tool.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
from math import factorial

import pytest

from kvmlock import explore


class Box:
    def __init__(self, v: int = 0) -> None:
        self.v = v


def run_threads(*fns):
    ts = [threading.Thread(target=f) for f in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def multinomial(n: int, k: int) -> int:
    return factorial(n * k) // factorial(k) ** n


# --------------------------------------------------------------------------- ABBA deadlock


def abba_body():
    ledger_lock = threading.Lock()
    audit_lock = threading.Lock()

    def post():
        with ledger_lock:
            with audit_lock:
                pass

    def audit():
        with audit_lock:
            with ledger_lock:
                pass

    run_threads(post, audit)


def ordered_body():
    ledger_lock = threading.Lock()
    audit_lock = threading.Lock()

    def post():
        with ledger_lock:
            with audit_lock:
                pass

    run_threads(post, post)


def test_abba_lockdep_reports_from_first_execution():
    # The first execution runs the threads one after the other (no preemption): it cannot
    # deadlock, but it takes both orders, so lockdep reports a cycle from that one run.
    res = explore.check(abba_body, strategy="dpor", lockdep=True)
    assert not res.ok
    assert set(res.kinds()) == {"lockdep"}
    assert res.runs == 1
    kinds = {r.kind for r in res.failure.lockdep_reports}
    assert kinds == {"circular"}
    text = str(res.failure.lockdep_reports[0])
    assert "ledger_lock" in text and "audit_lock" in text


def test_abba_explorer_finds_the_deadlock_without_lockdep():
    res = explore.check(abba_body, strategy="dpor", lockdep=False)
    assert not res.ok
    assert set(res.kinds()) == {"deadlock"}
    # the failure replays exactly
    rep = explore.replay(abba_body, res.failure.schedule, lockdep=False)
    assert set(rep.kinds()) == {"deadlock"}


@pytest.mark.parametrize("strategy", ["dpor", "dfs"])
def test_abba_near_miss_consistent_order_is_clean(strategy):
    res = explore.check(ordered_body, strategy=strategy, lockdep=True)
    assert res.ok and res.exhausted
    if strategy == "dpor":
        # two traces: which thread's critical section on ledger_lock comes first
        assert res.runs == 2


# --------------------------------------------------------------------------- locked counters


def make_counter(n: int, k: int, lock_type, seen: list, sleep_inside: bool = False):
    def body():
        lock = getattr(threading, lock_type)()  # looked up at run time: the explored one
        box = Box()
        order: list[int] = []

        def worker(i):
            for _ in range(k):
                with lock:
                    if sleep_inside:
                        time.sleep(0)  # a yield point inside the locked section
                    box.v += 1
                    order.append(i)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        seen.append(tuple(order))
        assert box.v == n * k

    return body


def all_orders(n: int, k: int) -> set:
    return set(itertools.permutations([i for i in range(n) for _ in range(k)]))


@pytest.mark.parametrize(
    "n,k,lock_type",
    [
        (2, 2, "Lock"),
        (2, 3, "Lock"),
        (3, 2, "Lock"),
        (2, 2, "RLock"),
        (3, 2, "RLock"),
    ],
)
def test_locked_counter_dpor_one_run_per_order_of_sections(n, k, lock_type):
    seen: list = []
    res = explore.check(make_counter(n, k, lock_type, seen), strategy="dpor")
    assert res.ok and res.exhausted
    expected = multinomial(n, k)  # 2x2: 6, 2x3: 20, 3x2: 90
    assert res.runs == expected
    assert len(seen) == expected
    assert set(seen) == all_orders(n, k)  # each order of the critical sections exactly once


def test_locked_counter_with_sleep_inside_lock_same_count():
    # time.sleep is a read-only visible operation: the sleeps commute with each other, so the
    # count is still the number of orders of the critical sections.
    seen: list = []
    res = explore.check(make_counter(2, 2, "Lock", seen, sleep_inside=True),
                        strategy="dpor", timeout=60)
    assert res.ok and res.exhausted
    assert res.runs == 6
    assert set(seen) == all_orders(2, 2)


def test_locked_counter_dfs_sees_every_order():
    seen: list = []
    res = explore.check(make_counter(2, 2, "Lock", seen), strategy="dfs")
    assert res.ok and res.exhausted
    assert res.runs >= 6
    assert set(seen) == all_orders(2, 2)


@pytest.mark.memory_tracing
def test_locked_counter_memory_true_same_count():
    # every access to box.v is inside the lock, so the data accesses follow the lock order
    seen: list = []
    res = explore.check(make_counter(2, 2, "Lock", seen), strategy="dpor", memory=True)
    assert res.ok and res.exhausted
    assert res.runs == 6


def test_independent_locks_one_trace():
    def body():
        la, lb = threading.Lock(), threading.Lock()
        a, b = Box(), Box()

        def wa():
            for _ in range(3):
                with la:
                    a.v += 1

        def wb():
            for _ in range(3):
                with lb:
                    b.v += 1

        run_threads(wa, wb)
        assert (a.v, b.v) == (3, 3)

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted
    assert res.runs == 1


# --------------------------------------------------------------------------- lost update


def lost_update_attr(results):
    def body():
        box = Box()

        def inc():
            tmp = box.v
            box.v = tmp + 1

        run_threads(inc, inc)
        results.append(box.v)
        assert box.v == 2, f"lost update: {box.v}"

    return body


def lost_update_dict(results):
    def body():
        d = {"n": 0}

        def inc():
            d["n"] += 1

        run_threads(inc, inc)
        results.append(d["n"])
        assert d["n"] == 2

    return body


@pytest.mark.parametrize("make", [lost_update_attr, lost_update_dict])
@pytest.mark.memory_tracing
def test_lost_update_found_with_memory(make):
    results: list = []
    res = explore.check(make(results), strategy="dpor", memory=True)
    assert not res.ok
    assert set(res.kinds()) == {"assertion"}
    rep = explore.replay(make([]), res.failure.schedule, memory=True)
    assert set(rep.kinds()) == {"assertion"}


@pytest.mark.parametrize("make", [lost_update_attr, lost_update_dict])
@pytest.mark.memory_tracing
def test_lost_update_all_traces(make):
    # R1 W1 / R2 W2 on one location: 6 interleavings, R1 R2 commute, so 4 traces; the two
    # where both reads precede both writes lose an update.
    results: list = []
    # shrink=False: shrinking re-runs failing executions, which would append to results again
    res = explore.check(make(results), strategy="dpor", memory=True, stop_on_first=False,
                        shrink=False)
    assert res.exhausted
    assert res.runs == 4
    assert sorted(results) == [1, 1, 2, 2]


@pytest.mark.memory_tracing
def test_lost_update_near_miss_locked():
    def body():
        box = Box()
        lock = threading.Lock()

        def inc():
            with lock:
                tmp = box.v
                box.v = tmp + 1

        run_threads(inc, inc)
        assert box.v == 2

    res = explore.check(body, strategy="dpor", memory=True)
    assert res.ok and res.exhausted
    assert res.runs == 2


@pytest.mark.memory_tracing
def test_read_mostly_does_not_multiply():
    def readers_only():
        cfg = {"x": 1}

        def reader(box):
            t = 0
            for _ in range(3):
                t += cfg["x"]
            box.v = t

        b1, b2 = Box(), Box()
        run_threads(lambda: reader(b1), lambda: reader(b2))
        assert b1.v == b2.v == 3

    res = explore.check(readers_only, strategy="dpor", memory=True)
    assert res.ok and res.exhausted
    assert res.runs == 1


@pytest.mark.memory_tracing
def test_one_writer_three_reads():
    # the single write can fall before, between or after the reader's three reads: 4 traces
    def body():
        cfg = {"x": 1}

        def reader(box):
            t = 0
            for _ in range(3):
                t += cfg["x"]
            box.v = t

        def writer():
            cfg["x"] = 2

        b = Box()
        run_threads(lambda: reader(b), writer)
        assert b.v in (3, 4, 5, 6)

    res = explore.check(body, strategy="dpor", memory=True)
    assert res.ok and res.exhausted
    assert res.runs == 4


# --------------------------------------------------------------------------- queue pipeline


def pipeline_body(outs):
    def body():
        q: queue.Queue = queue.Queue()
        got: list[int] = []

        def producer():
            for i in (1, 2, 3):
                q.put(i)
            q.put(None)

        def consumer():
            while True:
                item = q.get()
                if item is None:
                    break
                got.append(item)

        run_threads(producer, consumer)
        outs.append(tuple(got))
        assert got == [1, 2, 3]

    return body


def test_queue_pipeline_clean_exhaustive():
    outs: list = []
    res = explore.check(pipeline_body(outs), strategy="dpor", timeout=60)
    assert res.ok and res.exhausted
    # a consumer that finds the queue empty waits in get and then takes the item: the same
    # operations in the same order as one that comes late, so one trace (docs/explore.md,
    # Queues); one producer's puts and one consumer's gets are ordered only item by item
    assert res.runs == 1
    assert set(outs) == {(1, 2, 3)}


def test_queue_pipeline_with_join_and_task_done_clean():
    def body():
        q: queue.Queue = queue.Queue(maxsize=1)
        total = Box()

        def worker():
            while True:
                item = q.get()
                if item is None:
                    q.task_done()
                    break
                total.v += item
                q.task_done()

        t = threading.Thread(target=worker)
        t.start()
        for i in (1, 2):
            q.put(i)
        q.join()
        assert total.v == 3
        q.put(None)
        t.join()

    res = explore.check(body, strategy="dpor", timeout=60)
    assert res.ok and res.exhausted


def test_queue_check_then_get_deadlocks():
    # two consumers check empty() then get(): both can see the one item, one then blocks forever
    def body():
        q: queue.Queue = queue.Queue()
        q.put("job")

        def consumer():
            if not q.empty():
                q.get()

        run_threads(consumer, consumer)

    res = explore.check(body, strategy="dpor", lockdep=False)
    assert not res.ok
    assert set(res.kinds()) == {"deadlock"}


def test_queue_get_nowait_near_miss_clean():
    def body():
        q: queue.Queue = queue.Queue()
        q.put("job")
        taken = []

        def consumer():
            try:
                taken.append(q.get_nowait())
            except queue.Empty:
                pass

        run_threads(consumer, consumer)
        assert taken == ["job"]

    res = explore.check(body, strategy="dpor", lockdep=False)
    assert res.ok and res.exhausted


def test_consumer_expecting_one_item_too_many_deadlocks():
    def body():
        q: queue.Queue = queue.Queue()

        def producer():
            for i in range(2):
                q.put(i)

        def consumer():
            for _ in range(3):
                q.get()

        run_threads(producer, consumer)

    res = explore.check(body, strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


# --------------------------------------------------------------------------- Condition wake-ups


def cond_body(style):
    def body():
        cv = threading.Condition()
        state = {"ready": False}

        def waiter():
            with cv:
                if style == "bare":
                    cv.wait()  # no predicate: a notify that came first is lost
                elif style == "loop":
                    while not state["ready"]:
                        cv.wait()
                else:
                    cv.wait_for(lambda: state["ready"])

        def notifier():
            with cv:
                state["ready"] = True
                cv.notify()

        run_threads(waiter, notifier)

    return body


def test_condition_lost_wakeup_is_a_deadlock():
    res = explore.check(cond_body("bare"), strategy="dpor", lockdep=False)
    assert not res.ok
    assert set(res.kinds()) == {"deadlock"}
    rep = explore.replay(cond_body("bare"), res.failure.schedule, lockdep=False)
    assert set(rep.kinds()) == {"deadlock"}


@pytest.mark.parametrize("style", ["loop", "wait_for"])
def test_condition_predicate_near_miss_clean(style):
    res = explore.check(cond_body(style), strategy="dpor", lockdep=True)
    assert res.ok and res.exhausted
    assert res.runs >= 2  # the notifier before the waiter, and after it went to sleep


def notify_two(all_: bool):
    def body():
        cv = threading.Condition()
        state = {"ready": False}

        def waiter():
            with cv:
                while not state["ready"]:
                    cv.wait()

        def notifier():
            with cv:
                state["ready"] = True
                if all_:
                    cv.notify_all()
                else:
                    cv.notify()

        run_threads(waiter, waiter, notifier)

    return body


def test_notify_one_of_two_sleepers_can_deadlock():
    res = explore.check(notify_two(False), strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


def test_notify_all_two_sleepers_clean():
    res = explore.check(notify_two(True), strategy="dpor", lockdep=False)
    assert res.ok and res.exhausted


# --------------------------------------------------------------------------- other primitives


def test_event_barrier_semaphore_local_timer_clean():
    def body():
        ev = threading.Event()
        bar = threading.Barrier(2)
        sem = threading.BoundedSemaphore(1)
        loc = threading.local()
        hits = []
        fired = []

        def worker(name):
            loc.name = name
            bar.wait()
            with sem:
                hits.append(loc.name)
            ev.wait()

        ts = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
        for t in ts:
            t.start()
        tm = threading.Timer(0.5, lambda: fired.append(1))
        tm.start()
        ev.set()
        for t in ts:
            t.join()
        tm.join()
        assert sorted(hits) == ["a", "b"]
        assert fired == [1]

    res = explore.check(body, strategy="dpor", timeout=60)
    assert res.ok and res.exhausted, str(res)


def test_barrier_short_of_a_party_deadlocks():
    def body():
        bar = threading.Barrier(3)
        run_threads(bar.wait, bar.wait)

    res = explore.check(body, strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


def test_event_never_set_deadlocks():
    def body():
        ev = threading.Event()
        run_threads(ev.wait)

    res = explore.check(body, strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


def test_self_deadlock_on_lock_but_not_rlock():
    def make(lock_type):
        def body():
            lk = getattr(threading, lock_type)()

            def w():
                with lk:
                    with lk:
                        pass

            run_threads(w)

        return body

    bad = explore.check(make("Lock"), strategy="dpor", lockdep=False)
    assert set(bad.kinds()) == {"deadlock"}
    good = explore.check(make("RLock"), strategy="dpor", lockdep=True)
    assert good.ok and good.exhausted


def test_thread_pool_results_clean():
    def body():
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
            futs = [ex.submit(pow, 2, i) for i in range(3)]
            assert [f.result() for f in futs] == [1, 2, 4]

    res = explore.check(body, strategy="pct", max_runs=30, timeout=60)
    assert res.ok, str(res)


def test_thread_pool_nested_submit_on_one_worker_deadlocks():
    def body():
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)

        def inner():
            return 1

        def outer():
            return ex.submit(inner).result()  # the only worker waits for itself

        assert ex.submit(outer).result() == 1

    res = explore.check(body, strategy="dpor", lockdep=False, timeout=60)
    assert set(res.kinds()) == {"deadlock"}


# --------------------------------------------------------------------------- restoration


def snapshot():
    import _thread

    return (
        threading.Lock, threading.RLock, threading.Condition, threading.Semaphore,
        threading.BoundedSemaphore, threading.Event, threading.Barrier, threading.Timer,
        threading.Thread, threading.Thread.start, threading.Thread.join,
        threading.Thread.is_alive, threading.current_thread, threading.get_ident,
        threading.local, time.sleep, queue.Queue, queue.SimpleQueue, queue.LifoQueue,
        queue.PriorityQueue, concurrent.futures.ThreadPoolExecutor, _thread.allocate_lock,
    )


def real_threading_works():
    # a real lock really times out, and a real thread really runs beside this one
    lk = threading.Lock()
    lk.acquire()
    t0 = time.monotonic()
    assert lk.acquire(timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    lk.release()
    out = []
    t = threading.Thread(target=lambda: out.append(threading.get_ident()))
    t.start()
    t.join()
    assert out and out[0] != threading.get_ident()


def test_threading_restored_after_ok_failure_and_exception():
    before = snapshot()

    explore.check(ordered_body, strategy="dpor")
    assert snapshot() == before

    explore.check(abba_body, strategy="dpor", lockdep=False)
    assert snapshot() == before

    def raising():
        lk = threading.Lock()
        run_threads(lambda: lk.acquire())
        raise RuntimeError("boom in the body")

    try:
        r = explore.check(raising, strategy="dpor")
        assert set(r.kinds()) == {"exception"}
    except RuntimeError:
        pass
    assert snapshot() == before

    def thread_raises():
        def w():
            raise KeyError("in a thread")

        run_threads(w)

    r = explore.check(thread_raises, strategy="dpor")
    assert set(r.kinds()) == {"exception"}
    assert snapshot() == before

    with pytest.raises((ValueError, TypeError)):
        explore.check(ordered_body, strategy="dpor", max_runs=0)
    assert snapshot() == before
    real_threading_works()


def test_module_level_imported_names_restored():
    # a module that bound ``from threading import Lock`` before the check
    import types

    mod = types.ModuleType("heldout_fromimport")
    exec(
        "from threading import Lock, Thread\n"
        "def body():\n"
        "    a, b = Lock(), Lock()\n"
        "    def t1():\n"
        "        with a:\n"
        "            with b: pass\n"
        "    def t2():\n"
        "        with b:\n"
        "            with a: pass\n"
        "    ts = [Thread(target=t1), Thread(target=t2)]\n"
        "    [t.start() for t in ts]; [t.join() for t in ts]\n",
        mod.__dict__,
    )
    lock_before, thread_before = mod.Lock, mod.Thread
    res = explore.check(mod.body, strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}
    assert mod.Lock is lock_before and mod.Thread is thread_before


# --------------------------------------------------------------------------- never hung


def bounded(fn, seconds):
    box: list = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not return within {seconds}s"
    return box[0]


def test_timeout_honoured_on_a_large_exploration():
    seen: list = []
    body = make_counter(4, 3, "Lock", seen, sleep_inside=True)  # 369,600 traces
    res = bounded(lambda: explore.check(body, strategy="dpor", timeout=1.0), 30)
    assert res.stopped == "timeout"
    assert not res.exhausted


def test_timeout_honoured_when_an_execution_never_returns():
    def body():
        def spin():
            while True:  # no visible operation, ever
                pass

        run_threads(spin)

    res = bounded(lambda: explore.check(body, strategy="dpor", timeout=1.0, stall=60), 20)
    # .ok only says no failure was found; the verdict is incomplete, and says so
    assert res.stopped == "timeout"
    assert not res.exhausted
    assert "timeout" in res.headline()


def test_blocked_on_a_lock_made_outside_is_named():
    outside = threading.Lock()
    outside.acquire()  # held by this real thread for the whole check

    def body():
        def w():
            outside.acquire()  # made before the check: the explorer does not control it

        run_threads(w)

    res = bounded(lambda: explore.check(body, strategy="dpor", stall=1.0, timeout=30), 25)
    assert not res.ok
    assert set(res.kinds()) == {"blocked"}
    assert "outside.acquire()" in res.failure.message


def test_blocked_near_miss_lock_made_inside():
    def body():
        inside = threading.Lock()
        inside.acquire()

        def w():
            assert inside.acquire(timeout=1) is False  # times out (virtual clock), never blocks

        run_threads(w)
        inside.release()

    res = bounded(lambda: explore.check(body, strategy="dpor", stall=1.0, timeout=30), 25)
    assert res.ok and res.exhausted


# --------------------------------------------------------------------------- more programs

hits = 0  # a module global the threads below update


def bump_global():
    global hits
    hits += 1


@pytest.mark.memory_tracing
def test_lost_update_on_a_global():
    def body():
        global hits
        hits = 0
        run_threads(bump_global, bump_global)
        assert hits == 2

    res = explore.check(body, strategy="dpor", memory=True)
    assert set(res.kinds()) == {"assertion"}


@pytest.mark.memory_tracing
def test_lost_update_on_a_closure_variable():
    def body():
        n = 0

        def inc():
            nonlocal n
            n += 1

        run_threads(inc, inc)
        assert n == 2

    res = explore.check(body, strategy="dpor", memory=True)
    assert set(res.kinds()) == {"assertion"}


def membership(locked):
    def body():
        members: list[str] = []
        lock = threading.Lock()

        def join():
            if locked:
                lock.acquire()
            if "x" not in members:  # check-then-act on a plain list
                members.append("x")
            if locked:
                lock.release()

        run_threads(join, join)
        assert members == ["x"], members

    return body


@pytest.mark.memory_tracing
def test_check_then_append_on_a_list_found():
    res = explore.check(membership(False), strategy="dpor", memory=True)
    assert set(res.kinds()) == {"assertion"}


@pytest.mark.memory_tracing
def test_check_then_append_under_lock_clean():
    res = explore.check(membership(True), strategy="dpor", memory=True)
    assert res.ok and res.exhausted
    assert res.runs == 2


def test_condition_on_rlock_held_twice_releases_all_levels():
    # Condition.wait releases an RLock however deep it is held, and takes it back as deep
    def body():
        rl = threading.RLock()
        cv = threading.Condition(rl)
        state = {"ready": False}

        def waiter():
            with rl:           # depth 1
                with cv:       # depth 2: wait must release both levels for the notifier
                    while not state["ready"]:
                        cv.wait()
                # leaving the two blocks releases two levels: raises if fewer came back

        def notifier():
            with cv:
                state["ready"] = True
                cv.notify()

        run_threads(waiter, notifier)
        assert not rl._is_owned()

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted, str(res)


def test_explored_rlock_recursion_count():
    def body():
        rl = threading.RLock()
        with rl:
            with rl:
                assert rl._recursion_count() == 2
            assert rl._recursion_count() == 1
        assert rl._recursion_count() == 0

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted, str(res)


def timed_get(timeout):
    def body():
        q: queue.Queue = queue.Queue()

        def producer():
            q.put("item")

        def consumer():
            assert q.get(timeout=timeout) == "item"  # raises queue.Empty if it times out

        run_threads(producer, consumer)

    return body


def test_get_with_timeout_explores_the_time_out():
    # the producer may be slower than the timeout: that execution raises queue.Empty
    res = explore.check(timed_get(0.5), strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"exception"}
    assert "Empty" in res.failure.message or isinstance(res.failure.exception, queue.Empty)


def test_get_without_timeout_clean():
    res = explore.check(timed_get(None), strategy="dpor", lockdep=False)
    assert res.ok and res.exhausted


def test_polling_is_alive_with_sleep_terminates():
    def body():
        done = []
        t = threading.Thread(target=lambda: done.append(1))
        t.start()
        while t.is_alive():
            time.sleep(0.01)
        t.join()
        assert done == [1]

    res = explore.check(body, strategy="dpor", timeout=60)
    assert res.ok and res.exhausted


def test_counting_semaphore_bounds_concurrency():
    def body():
        sem = threading.Semaphore(2)
        inside = Box()
        peak = Box()
        guard = threading.Lock()

        def worker():
            with sem:
                with guard:
                    inside.v += 1
                    peak.v = max(peak.v, inside.v)
                with guard:
                    inside.v -= 1

        run_threads(worker, worker, worker)
        assert peak.v <= 2

    res = explore.check(body, strategy="dpor", timeout=60)
    assert res.ok and res.exhausted


def test_bounded_semaphore_over_release_raises_in_thread():
    def body():
        sem = threading.BoundedSemaphore(1)
        run_threads(sem.release)  # ValueError: released too many times

    res = explore.check(body, strategy="dpor")
    assert set(res.kinds()) == {"exception"}


def test_lockdep_class_names_match_kvmlock_lockdep(tmp_path):
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    src = (
        "import threading\n"
        "class Shop:\n"
        "    def __init__(self):\n"
        "        self.stock_lock = threading.Lock()\n"
        "        self.order_lock = threading.Lock()\n"
        "def body():\n"
        "    shop = Shop()\n"
        "    def sell():\n"
        "        with shop.stock_lock:\n"
        "            with shop.order_lock: pass\n"
        "    def refund():\n"
        "        with shop.order_lock:\n"
        "            with shop.stock_lock: pass\n"
        "    for fn in (sell, refund):\n"
        "        t = threading.Thread(target=fn)\n"
        "        t.start()\n"
        "        t.join()\n"
        "if __name__ == '__main__':\n"
        "    body()\n"
    )
    path = tmp_path / "shop_heldout.py"
    path.write_text(src)
    exe = Path(sys.executable).with_name("kvmlock")
    out = tmp_path / "r.json"
    subprocess.run([str(exe), "lockdep", "--quiet", "--json", str(out), str(path)],
                   cwd=tmp_path, capture_output=True, timeout=60)
    (cli,) = json.loads(out.read_text())

    spec = importlib.util.spec_from_file_location("shop_heldout", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = explore.check(mod.body, strategy="dpor")
    (rep,) = res.failure.lockdep_reports
    assert {rep.lock, rep.held} == {cli["lock"], cli["held"]}
    assert {rep.lock, rep.held} == {"Shop.stock_lock", "Shop.order_lock"}


def _release_unlocked():
    lk = threading.Lock()
    with pytest.raises(RuntimeError):
        lk.release()


def _negative_timeout():
    lk = threading.Lock()
    with pytest.raises(ValueError):
        lk.acquire(timeout=-5)


def _timeout_with_nonblocking():
    lk = threading.Lock()
    with pytest.raises(ValueError):
        lk.acquire(False, 1)


def _pickle_lock():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(threading.Lock())


def _trylock_results():
    lk = threading.Lock()
    assert lk.acquire() is True and lk.locked()
    assert lk.acquire(False) is False
    lk.release()
    assert not lk.locked()


def _rlock_release_unacquired():
    rl = threading.RLock()
    with pytest.raises(RuntimeError):
        rl.release()


def _rlock_release_by_other_thread():
    rl = threading.RLock()
    rl.acquire()
    errors = []

    def not_owner():
        try:
            rl.release()
        except RuntimeError:
            errors.append("not owner")

    run_threads(not_owner)
    assert errors == ["not owner"]
    rl.release()


PARITY = [
    pytest.param(_release_unlocked, id="release_unlocked"),
    pytest.param(_negative_timeout, id="negative_timeout"),
    pytest.param(_timeout_with_nonblocking, id="timeout_with_nonblocking"),
    pytest.param(_pickle_lock, id="pickle_lock"),
    pytest.param(_trylock_results, id="trylock_results"),
    pytest.param(_rlock_release_unacquired, id="rlock_release_unacquired"),
    pytest.param(_rlock_release_by_other_thread, id="rlock_release_by_other_thread"),
]


@pytest.mark.parametrize("body", PARITY)
def test_explored_locks_behave_like_python(body):
    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted, str(res)


def test_explored_lock_as_a_signal():
    # a Lock may be released by a thread that did not take it (a binary semaphore)
    def body():
        done = threading.Lock()
        done.acquire()
        out = []

        def worker():
            out.append(1)
            done.release()

        t = threading.Thread(target=worker)
        t.start()
        done.acquire()  # waits for the worker's release
        assert out == [1]
        done.release()
        t.join()

    res = explore.check(body, strategy="dpor", lockdep=True)
    assert res.ok and res.exhausted, str(res)


# ------------------------------------------------------------------------ subclasses, timed waits


def subclass_body(locked):
    def body():
        box = Box()
        lock = threading.Lock()

        class Adder(threading.Thread):
            def run(self):
                if locked:
                    with lock:
                        box.v += 1
                else:
                    box.v += 1

        ts = [Adder(), Adder()]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert box.v == 2

    return body


@pytest.mark.memory_tracing
def test_thread_subclass_lost_update():
    res = explore.check(subclass_body(False), strategy="dpor", memory=True)
    assert set(res.kinds()) == {"assertion"}


@pytest.mark.memory_tracing
def test_thread_subclass_locked():
    res = explore.check(subclass_body(True), strategy="dpor", memory=True)
    assert res.ok and res.exhausted and res.runs == 2


def test_join_with_timeout_both_outcomes():
    outcomes = set()

    def body():
        ev = threading.Event()
        t = threading.Thread(target=ev.wait)
        t.start()
        t.join(timeout=0.5)
        outcomes.add(t.is_alive())  # still waiting: the join timed out
        ev.set()
        t.join()

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted
    assert outcomes == {True}


def test_event_wait_timeout_both_outcomes():
    outcomes = set()

    def body():
        ev = threading.Event()
        t = threading.Thread(target=ev.set)
        t.start()
        outcomes.add(ev.wait(timeout=1.0))
        t.join()

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted
    assert outcomes == {True, False}


def test_local_subclass_inside_body():
    def body():
        class Ctx(threading.local):
            def __init__(self):
                self.items = []

        ctx = Ctx()
        out = {}

        def w(name):
            ctx.items.append(name)
            out[name] = list(ctx.items)

        ts = [threading.Thread(target=w, args=(n,)) for n in "ab"]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out == {"a": ["a"], "b": ["b"]}
        assert ctx.items == []

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted, str(res)


def test_lifo_and_priority_queues():
    def body():
        lq, pq = queue.LifoQueue(), queue.PriorityQueue()
        for i in (1, 2, 3):
            lq.put(i)
        for i in (3, 1, 2):
            pq.put(i)
        got = []

        def consumer():
            got.append([lq.get() for _ in range(3)])
            got.append([pq.get() for _ in range(3)])

        t = threading.Thread(target=consumer)
        t.start()
        t.join()
        assert got == [[3, 2, 1], [1, 2, 3]]

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted, str(res)


def test_daemon_thread_flag():
    def body():
        out = []
        t = threading.Thread(target=lambda: out.append(threading.current_thread().daemon),
                             daemon=True)
        t.start()
        t.join()
        assert out == [True]

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted, str(res)


def test_futures_as_completed_explored():
    cf = concurrent.futures

    def body():
        with cf.ThreadPoolExecutor(max_workers=2) as ex:
            fs = [ex.submit(pow, 2, i) for i in range(3)]
            assert sorted(f.result() for f in cf.as_completed(fs)) == [1, 2, 4]

    res = explore.check(body, strategy="random", max_runs=20, timeout=60)
    assert res.ok, str(res)


def simple_queue_body(extra_get):
    def body():
        q = queue.SimpleQueue()
        got = []

        def producer():
            for i in range(2):
                q.put(i)

        def consumer():
            for _ in range(2 + extra_get):
                got.append(q.get())

        run_threads(producer, consumer)
        assert got == [0, 1]

    return body


def test_simple_queue_pipeline_clean():
    res = explore.check(simple_queue_body(0), strategy="dpor", lockdep=False)
    assert res.ok and res.exhausted
    assert res.runs == 1  # waiting in get or coming late: one trace (see above)


def test_simple_queue_get_with_nothing_left_deadlocks():
    res = explore.check(simple_queue_body(1), strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}
