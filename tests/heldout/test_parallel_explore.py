"""Held-out: one exploration split across workers explores exactly the sequential trace set.

Expected counts come from the sequential semantics (one execution per Mazurkiewicz trace for
dpor, one per schedule for dfs); the parallel run must give the same numbers, and a failure
it finds must replay in this process. Speed is measured by the benchmarks, not here.
"""

from __future__ import annotations

import threading

import pytest

from kvmlock import explore, spawn
from kvmlock.sync import Mutex


class Box:
    def __init__(self) -> None:
        self.v = 0


def threading_counter(n, k):
    def body():
        lock = threading.Lock()
        box = Box()

        def worker():
            for _ in range(k):
                with lock:
                    box.v += 1

        ts = [threading.Thread(target=worker) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert box.v == n * k

    return body


def sync_counter(n, k):
    def body():
        m = Mutex("heldout->counter")
        box = Box()

        def worker():
            for _ in range(k):
                with m:
                    box.v += 1

        ts = [spawn(worker) for _ in range(n)]
        for t in ts:
            t.join()
        assert box.v == n * k

    return body


def lost_update():
    box = Box()

    def inc():
        tmp = box.v
        box.v = tmp + 1

    ts = [threading.Thread(target=inc) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert box.v == 2, f"lost update: {box.v}"


def abba():
    a, b = threading.Lock(), threading.Lock()

    def t1():
        with a:
            with b:
                pass

    def t2():
        with b:
            with a:
                pass

    ts = [threading.Thread(target=t1), threading.Thread(target=t2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


@pytest.mark.parametrize(
    "make,n,k,expected",
    [(threading_counter, 3, 2, 90), (sync_counter, 2, 3, 20), (sync_counter, 3, 2, 90)],
)
def test_dpor_two_workers_same_trace_count(make, n, k, expected):
    seq = explore.check(make(n, k), strategy="dpor")
    par = explore.check(make(n, k), strategy="dpor", workers=2)
    assert seq.ok and seq.exhausted and seq.runs == expected
    assert par.ok and par.exhausted
    assert par.runs == expected


def test_dfs_two_workers_same_schedule_count():
    seq = explore.check(sync_counter(2, 2), strategy="dfs")
    par = explore.check(sync_counter(2, 2), strategy="dfs", workers=2)
    assert seq.exhausted and par.exhausted
    assert par.runs == seq.runs


@pytest.mark.memory_tracing
def test_parallel_lost_update_found_and_replays():
    par = explore.check(lost_update, strategy="dpor", workers=2, memory=True)
    assert set(par.kinds()) == {"assertion"}
    rep = explore.replay(lost_update, par.failure.schedule, memory=True)
    assert set(rep.kinds()) == {"assertion"}


@pytest.mark.memory_tracing
def test_parallel_lost_update_all_traces():
    par = explore.check(lost_update, strategy="dpor", workers=2, memory=True,
                        stop_on_first=False)
    assert par.exhausted
    assert par.runs == 4
    assert set(par.kinds()) == {"assertion"}
    for f in par.failures:
        rep = explore.replay(lost_update, f.schedule, memory=True)
        assert set(rep.kinds()) == {"assertion"}


def test_parallel_deadlock_found_and_replays():
    par = explore.check(abba, strategy="dpor", workers=2, lockdep=False)
    assert set(par.kinds()) == {"deadlock"}
    rep = explore.replay(abba, par.failure.schedule, lockdep=False)
    assert set(rep.kinds()) == {"deadlock"}


def test_ray_backend_same_trace_count():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        par = explore.check(sync_counter(3, 2), strategy="dpor", workers=2, backend="ray")
        assert par.ok and par.exhausted and par.runs == 90
        bad = explore.check(abba, strategy="dpor", workers=2, backend="ray", lockdep=False)
        assert set(bad.kinds()) == {"deadlock"}
        rep = explore.replay(abba, bad.failure.schedule, lockdep=False)
        assert set(rep.kinds()) == {"deadlock"}
    finally:
        if started:
            ray.shutdown()


def test_exploration_beside_a_real_kvmlock_thread():
    from kvmlock import lockdep

    stop = threading.Event()
    seen_reports: list = []

    def hammer():
        with lockdep.isolated():
            a, b = Mutex("real->a"), Mutex("real->b")
            while not stop.is_set():
                with a:
                    with b:
                        pass
            seen_reports.extend(lockdep.reports())

    t = threading.Thread(target=hammer)
    t.start()
    try:
        res = explore.check(sync_counter(2, 3), strategy="dpor")
        bad = explore.check(abba, strategy="dpor", lockdep=False)
    finally:
        stop.set()
        t.join()
    assert res.ok and res.exhausted and res.runs == 20
    assert set(bad.kinds()) == {"deadlock"}
    assert seen_reports == []


def test_two_explorations_in_threads_at_once():
    out: dict = {}

    def run(name, fn):
        out[name] = fn()

    ts = [
        threading.Thread(target=run, args=("counter", lambda: explore.check(
            sync_counter(3, 2), strategy="dpor"))),
        threading.Thread(target=run, args=("abba", lambda: explore.check(
            abba, strategy="dpor", lockdep=False))),
        threading.Thread(target=run, args=("tcounter", lambda: explore.check(
            threading_counter(2, 3), strategy="dpor"))),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out["counter"].ok and out["counter"].exhausted and out["counter"].runs == 90
    assert out["tcounter"].ok and out["tcounter"].exhausted and out["tcounter"].runs == 20
    assert set(out["abba"].kinds()) == {"deadlock"}
