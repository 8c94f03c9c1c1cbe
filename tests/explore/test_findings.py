"""The explorer catches what it must, and stays quiet on the near misses."""

from __future__ import annotations

import pytest

from kvmlock import explore, spawn
from kvmlock.sync import Atomic64, Mutex

from .programs import abba, lost_update, reread_then_store, rwsem_fairness, spin_until_set


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_abba_deadlock_found(strategy):
    res = explore.check(abba(), strategy=strategy, lockdep=False)
    assert not res.ok
    f = res.failure
    assert f.kind == "deadlock"
    assert "waits for: lock b" in f.message and "waits for: lock a" in f.message
    assert "held by task" in f.message
    again = explore.replay(abba(), f.schedule, lockdep=False)
    assert again.failure is not None and again.failure.kind == "deadlock"


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_abba_lockdep_report_without_deadlock(strategy):
    res = explore.check(abba(), strategy=strategy)
    f = res.failure
    assert f.kind == "lockdep"
    assert any(r.kind == "circular" for r in f.lockdep_reports)
    # the reporting execution itself ran to completion: replaying it ends in no deadlock
    assert "blocked" not in f.trace_table()
    again = explore.replay(abba(), f.schedule)
    assert again.failure.kind == "lockdep"
    assert again.failure.preemptions == 0


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_same_order_is_clean_and_exhausted(strategy):
    res = explore.check(abba(same_order=True), strategy=strategy)
    assert res.ok and res.exhausted
    assert res.runs >= 1


@pytest.mark.parametrize("strategy", ["dfs", "dpor", "pct", "random"])
def test_lost_update_found(strategy):
    res = explore.check(lost_update(), strategy=strategy, seed=1, max_runs=None
                        if strategy in ("dfs", "dpor") else 500)
    assert res.failure is not None and res.failure.kind == "assertion"
    assert "lost update: x = 1" in res.failure.message
    assert explore.replay(lost_update(), res.failure.schedule).failure.kind == "assertion"


@pytest.mark.parametrize("fix", ["cmpxchg", "lock"])
@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_lost_update_fixed_is_exhausted_clean(strategy, fix):
    res = explore.check(lost_update(fix), strategy=strategy)
    assert res.ok and res.exhausted, str(res)
    assert res.runs > 1  # the fixed versions still have several distinct interleavings


def test_rwsem_fairness_deadlock_found():
    res = explore.check(rwsem_fairness(recursive=False), strategy="dpor", lockdep=False)
    assert res.failure is not None and res.failure.kind == "deadlock", str(res)
    msg = res.failure.message
    assert "down_write" in msg and "down_read" in msg


def test_rwsem_fairness_deadlock_dfs_agrees():
    res = explore.check(rwsem_fairness(recursive=False), strategy="dfs", lockdep=False)
    assert res.failure is not None and res.failure.kind == "deadlock"


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_recursive_rwlock_is_not_a_deadlock(strategy):
    res = explore.check(rwsem_fairness(recursive=True), strategy=strategy, lockdep=False)
    assert res.ok and res.exhausted, str(res)


def test_rwsem_fairness_lockdep_sees_it_too():
    res = explore.check(rwsem_fairness(recursive=False), strategy="dpor",
                        stop_on_first=False)
    assert "lockdep" in res.kinds() or "deadlock" in res.kinds()
    assert "deadlock" in res.kinds()


def test_exception_in_task_is_reported_with_its_line():
    def body():
        def bad():
            Atomic64(0).store(1)
            raise KeyError("boom")

        spawn(bad).join()

    res = explore.check(body, strategy="dfs")
    f = res.failure
    assert f.kind == "exception"
    assert "KeyError" in f.message and "raise KeyError" in f.message
    assert f.where.startswith("test_findings.py:")


def test_spinning_forever_is_a_hang_not_a_stuck_program():
    def body():
        flag = Atomic64(0, name="flag")

        def waiter():
            while not flag.load():
                pass

        spawn(waiter).join()

    res = explore.check(body, strategy="dfs", max_steps=200)
    assert res.failure is not None and res.failure.kind == "hang"
    assert "spins on: load flag" in res.failure.message
    assert "max_steps=200" in res.failure.message


def test_unbounded_loop_hits_max_steps():
    def body():
        x = Atomic64(0, name="x")

        def runaway():
            while True:
                x.fetch_add(1)

        spawn(runaway).join()

    res = explore.check(body, strategy="dfs", max_steps=150)
    assert res.failure is not None and res.failure.kind == "hang"
    assert "max_steps=150" in res.failure.message


def test_spin_that_ends_is_not_a_hang():
    body = spin_until_set(waiter_first=False)

    # without a preemption bound: a spinner yields while another task can run, so the
    # exhaustive search stays finite
    res = explore.check(body, strategy="dfs", max_steps=200)
    assert res.ok and res.exhausted, str(res)
    assert res.steps < 20 * res.runs
    assert explore.check(body, strategy="dpor", max_steps=200).ok


def test_lockdep_off_ignores_reports_but_deadlocks_still_count():
    res = explore.check(abba(same_order=False), strategy="dpor", lockdep=False,
                        stop_on_first=False)
    assert res.kinds() == {"deadlock"}


def test_lock_held_by_other_blocks_and_trylock_fails():
    seen = []

    def body():
        m = Mutex("m")

        def holder():
            with m:
                explore.yield_point("inside")

        def trier():
            if m.trylock():
                seen.append("got")
                m.unlock()
            else:
                seen.append("busy")

        ts = [spawn(holder), spawn(trier)]
        for t in ts:
            t.join()

    res = explore.check(body, strategy="dpor")
    assert res.ok and res.exhausted
    assert set(seen) == {"got", "busy"}


def test_lock_held_at_task_exit_is_a_lockdep_failure():
    def body():
        m = Mutex("leaky")

        def leak():
            m.lock()

        spawn(leak).join()

    res = explore.check(body, strategy="dpor")
    assert res.failure is not None and res.failure.kind == "lockdep"
    assert any(r.kind == "held_at_exit" for r in res.failure.lockdep_reports)


def test_released_before_exit_is_clean():
    def body():
        m = Mutex("tidy")

        def tidy():
            m.lock()
            m.unlock()

        spawn(tidy).join()

    assert explore.check(body, strategy="dpor").ok


def test_ctrl_c_in_a_task_stops_the_exploration():
    def body():
        def stop():
            Atomic64(0).load()
            raise KeyboardInterrupt

        spawn(stop).join()

    with pytest.raises(KeyboardInterrupt):
        explore.check(body, strategy="dfs")
    from kvmlock import runtime

    assert not isinstance(runtime.RT, explore.SimRuntime)


def test_pct_depth_matters():
    from .programs import lost_update as lu

    # depth 1 = no priority change: a task runs until it blocks, so no lost update
    shallow = explore.check(lu(), strategy="pct", depth=1, max_runs=200, seed=1)
    assert shallow.ok and not shallow.exhausted
    # depth 2 = one change point: enough for a bug that needs one preemption
    deep = explore.check(lu(), strategy="pct", depth=2, max_runs=200, seed=1)
    assert deep.failure is not None and deep.failure.kind == "assertion"


def test_spin_detection_can_be_turned_off():
    body = spin_until_set(waiter_first=True)

    # without the rule the waiter may spin until the step budget runs out
    off = explore.check(body, strategy="dfs", max_steps=100, spin_detection=False)
    assert off.failure is not None and off.failure.kind == "hang"
    again = explore.replay(body, off.failure.schedule, max_steps=100, spin_detection=False)
    assert again.failure.kind == "hang"
    assert explore.check(body, strategy="dfs", max_steps=100).ok


@pytest.mark.parametrize("loads", [2, 3])
@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_bounded_reread_is_not_taken_for_a_spin_wait(strategy, loads):
    seen: set = set()
    res = explore.check(reread_then_store(seen, loads), strategy=strategy, max_steps=200)
    assert res.ok and res.exhausted, str(res)
    # the reader sees the store in some interleaving, as it does with spin detection off
    off: set = set()
    explore.check(reread_then_store(off, loads), strategy="dfs", max_steps=200,
                  spin_detection=False)
    assert off == {0, 1}
    assert seen == off
