"""The watcher and its worker stay paired whatever interleaving they meet (see guard.py).

Each test forces one interleaving with hooks and events rather than hoping for it: a busy loop
whose only point of letting other threads run has no line number, a watcher that fails while a
job runs, a stop that lands in the worker's own bookkeeping.
"""

from __future__ import annotations

import functools
import itertools
import linecache
import os
import sys
import threading

import pytest

from kvmlock import explore
from kvmlock.explore import guard


def _spin(flags: dict) -> None:
    """A loop without calls: its only eval-breaker check, so the only place another thread
    can see it (and the watcher sample it), is the jump back, which CPython 3.11 gives no
    line number (``frame.f_lineno`` is None there)."""
    for _ in itertools.repeat(None):
        if flags["go"]:
            break
        if flags["go"] is None:
            flags["go"] = False


def _back_edge_has_no_line() -> bool:
    import dis

    return any(i.opname == "JUMP_BACKWARD" and i.positions.lineno is None
               for i in dis.get_instructions(_spin))


def _spinning_body() -> None:
    _spin({"go": False})


@pytest.mark.skipif(not _back_edge_has_no_line(), reason="this Python gives the jump a line")
def test_a_busy_loop_seen_where_it_has_no_line_is_a_hang_named_by_its_last_line():
    res = explore.check(_spinning_body, stall=0.3)
    assert res.failure is not None and res.failure.kind == "hang"
    assert "`for _ in itertools.repeat(None):` in _spin()" in res.failure.message
    assert "test_guard.py:" in res.failure.where
    res = explore.check(_spinning_body, timeout=0.3, stall=None)
    assert res.stopped == "timeout" and not res.exhausted


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that end a thread (a worker dying) would otherwise only be a warning. The
    test gets workers of its own: what it does to them stays with it."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: seen.append(a.exc_value))
    monkeypatch.setattr(guard, "_workers", threading.local())
    return seen


def _parked_or_gone(ident: int) -> None:
    """Wait until the worker ``ident`` is done with its job: waiting for the next, or ended."""
    while True:
        f = sys._current_frames().get(ident)
        if f is None or (f.f_code.co_filename == guard.__file__ and "go.acquire()" in
                         linecache.getline(guard.__file__, f.f_lineno or 0)):
            return
        threading.Event().wait(0.001)


def test_a_watcher_that_fails_leaves_no_job_behind_for_the_next_check(monkeypatch,
                                                                    thread_errors):
    """An error in the watcher ends its watch while the job still runs. The next check must
    get its own job's result, not the left-over job's, and no worker may signal twice."""
    def failing_describe(frame):
        raise LookupError("the watcher failed")

    flags = {"go": False}
    worker: list[int] = []

    def first() -> str:
        worker.append(threading.get_ident())
        _spin(flags)
        return "first"

    with monkeypatch.context() as m, pytest.raises(LookupError):
        m.setattr(guard, "_describe", failing_describe)
        guard.run(first, timeout=None, stall=0.2)
    flags["go"] = True  # the left-over job, if still running, ends now...
    _parked_or_gone(worker[0])  # ...and its completion is given before the next check starts
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.2)  # the watcher keeps the interpreter until it must wait
    try:
        assert guard.run(lambda: "second", timeout=None, stall=None) == "second"
        assert guard.run(lambda: "third", timeout=None, stall=None) == "third"
    finally:
        sys.setswitchinterval(old)
    # twice more: a worker left paired with the wrong watcher would now signal twice
    flags["go"] = False
    with monkeypatch.context() as m, pytest.raises(LookupError):
        m.setattr(guard, "_describe", failing_describe)
        guard.run(first, timeout=None, stall=0.2)
    flags["go"] = True
    _parked_or_gone(worker[1])
    assert guard.run(lambda: "fourth", timeout=None, stall=None) == "fourth"
    assert thread_errors == []


def test_a_stop_that_lands_after_the_job_is_a_stop_not_a_blocked_worker(monkeypatch,
                                                                        thread_errors):
    """The watcher decides to stop the worker just as its job has returned: the stop lands in
    the worker's clean-up, before the job's completion is given. That is the stop it sent,
    taken at once: not a worker blocked in a call (which it would say after its grace)."""
    real_unbind = guard._pythreads.unbind_thread
    real_interrupt = guard._interrupt
    sent = {"go": False}
    armed = [True]

    def interrupt(ident: int) -> None:
        real_interrupt(ident)
        sent["go"] = True  # (after: once seen, the stop is pending in the worker)

    def slow_unbind() -> None:
        if armed and threading.current_thread().name == "kvmlock-explore":
            armed.clear()
            while not sent["go"]:  # busy (so never "blocked") until the stop is sent,
                pass  # which then lands here
        real_unbind()

    with monkeypatch.context() as m, pytest.raises(guard.Interrupted) as stopped:
        m.setattr(guard, "_interrupt", interrupt)
        m.setattr(guard._pythreads, "unbind_thread", slow_unbind)
        guard.run(lambda: "done", timeout=None, stall=0.2)
    assert stopped.value.reason == "stall"
    assert guard.run(lambda: "next", timeout=None, stall=None) == "next"
    assert thread_errors == []


def test_a_stop_lost_where_it_landed_still_ends_the_job(monkeypatch, thread_errors):
    """A stop can be lost: one that lands in a collector callback or a finalizer is printed
    and dropped. Here it is dropped outright, and the body then runs on, reaching visible
    operations forever. The job must still end as stopped, not run on until the watcher
    gives up and calls it blocked."""
    flags = {"go": False}

    def lost(ident: int) -> None:
        flags["go"] = True  # the stop's only effect: the body goes on past its quiet loop

    def body() -> None:
        lock = threading.Lock()
        while not flags["go"]:  # no visible operation: the watcher stops it...
            pass
        while True:  # ...and it runs on through visible operations
            with lock:
                pass

    monkeypatch.setattr(guard, "_interrupt", lost)
    monkeypatch.setattr(guard, "_take_pending_stop", lambda: None)  # (nothing is pending)
    res = explore.check(body, stall=0.3, max_steps=10**9)
    assert res.failure is not None and res.failure.kind == "hang", res.failure
    assert flags["go"]
    assert thread_errors == []



_steered = pytest.mark.skipif(
    guard._getcpu is None or (os.cpu_count() or 1) < 2,
    reason="the worker is woken where the caller is only on Linux, with two CPUs or more")


def _affinities(caller: int, seen: list) -> None:
    seen.append((os.sched_getaffinity(0), os.sched_getaffinity(caller)))


def _in_thread_on(cpus: set[int], fn) -> list:
    """``fn`` run in a new thread of the program that has ``cpus`` (a thread's CPUs are its
    own: whatever an earlier check did to this one's cannot hide a mask not given back)."""
    out: list = []

    def caller() -> None:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            out.append(None)
            return
        fn(out)

    t = threading.Thread(target=caller)
    t.start()
    t.join()
    if out == [None]:
        pytest.skip(f"this process may not run on CPUs {sorted(cpus)}")
    return out


@_steered
def test_the_caller_waits_on_its_cpu_and_the_body_and_caller_keep_their_own_cpus():
    two = {0, 1}

    def checks(out: list) -> None:
        seen: list = []
        res = explore.check(functools.partial(_affinities, threading.get_native_id(), seen))
        out.append((res.ok, *seen[0], os.sched_getaffinity(0)))

    [(ok, body_cpus, caller_cpus, after)] = _in_thread_on(two, checks)
    assert ok
    assert body_cpus == two  # the worker got its CPUs back before the job
    assert len(caller_cpus) == 1 and caller_cpus <= two  # the caller waits where it was
    assert after == two  # and has its own again


@_steered
def test_the_caller_gets_its_cpus_back_on_every_way_out():
    """Checks that end with a failure, stopped at their timeout, and blocked in a call the
    explorer does not control; and a caller with a single CPU keeps it."""
    two, one = {0, 1}, {1}
    held = threading.Lock()
    held.acquire()  # (made outside the check: a real lock nobody will release)

    def checks(out: list) -> None:
        bad = explore.check(lambda: 1 / 0)
        out.append((bad.failure is not None, os.sched_getaffinity(0)))
        late = explore.check(_spinning_body, timeout=0.3, stall=None)
        out.append((late.stopped == "timeout", os.sched_getaffinity(0)))
        stuck = explore.check(held.acquire, stall=0.3)
        out.append((stuck.stopped == "blocked", os.sched_getaffinity(0)))

    assert _in_thread_on(two, checks) == [(True, two)] * 3

    def single(out: list) -> None:
        seen: list = []
        res = explore.check(functools.partial(_affinities, threading.get_native_id(), seen))
        out.append((res.ok, seen[0][0], os.sched_getaffinity(0)))

    assert _in_thread_on(one, single) == [(True, one, one)]


@_steered
def test_where_the_os_refuses_to_place_threads_a_check_runs_as_before(monkeypatch,
                                                                     thread_errors):
    """A sandbox may forbid setting (or reading) a thread's CPUs: the hand-over is then left
    to the OS, and the check's answer is the same."""
    def refused(*_a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refused)
    res = explore.check(functools.partial(_affinities, threading.get_native_id(), []))
    assert res.ok and res.exhausted
    monkeypatch.setattr(os, "sched_getaffinity", refused)
    monkeypatch.setattr(guard, "_workers", threading.local())  # a new worker reads its CPUs
    res = explore.check(lambda: None)
    assert res.ok and res.exhausted and thread_errors == []
