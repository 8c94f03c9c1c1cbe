"""asyncio programs under the explorer: every asyncio task an explored task, steps as choices."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from kvmlock import explore
from kvmlock.explore import cli

from . import asyncprogs as p

pytest_plugins = ["pytester"]


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_check_then_act_across_an_await_is_found_and_the_locked_version_is_clean(strategy):
    # Steps: each withdrawal checks and yields (1), then acts and ends (2); one that comes
    # after the other's act fails its check and ends at once. Orders of a1 a2 b1 b2: a1 a2 b,
    # a1 b1 a2 b2, a1 b1 b2 a2 and the three mirrored: 6, 4 of which overdraw.
    res = explore.check(p.check_then_act, strategy, stop_on_first=False)
    assert res.exhausted and res.runs == 6
    f = res.failures[0]
    assert f.kind == "assertion" and "overdrawn: -20" in f.message
    assert f.where.startswith("asyncprogs.py:")
    # With the lock the second withdrawal either waits for it (a1 b1 a2 b2) or comes after
    # (a1 a2 b1), mirrored: 4 executions.
    ok = explore.check(p.check_then_act_locked, strategy)
    assert ok.ok and ok.exhausted and ok.runs == 4


def test_sampling_strategies_find_the_race_too():
    for strategy in ("pct", "random"):
        res = explore.check(p.check_then_act, strategy, max_runs=200, seed=1)
        assert res.failures and res.failures[0].kind == "assertion"
        assert explore.check(p.check_then_act_locked, strategy, max_runs=50).ok


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_lock_order_deadlock_between_two_tasks_and_the_consistent_order(strategy):
    # ab first: ab finishes before ba starts (1), or ba takes b, then the two inner steps in
    # either order deadlock (2); mirrored: 6. Consistent order: 4, as for the locked counter.
    res = explore.check(p.lock_order_inversion, strategy, lockdep=False, stop_on_first=False)
    assert res.exhausted and res.runs == 6 and res.kinds() == {"deadlock"}
    msg = res.failures[0].message
    assert re.search(r"task 1 \(ab\) waits for: lock \S+ \(held by task 2 ba\)", msg), msg
    assert re.search(r"task 2 \(ba\) waits for: lock \S+ \(held by task 1 ab\)", msg), msg
    ok = explore.check(p.lock_order_consistent, strategy, lockdep=False)
    assert ok.ok and ok.exhausted and ok.runs == 4


def test_lockdep_sees_the_asyncio_inversion_in_a_run_that_does_not_deadlock():
    res = explore.check(p.lock_order_inversion, "dpor")
    f = res.failures[0]
    assert f.kind == "lockdep" and res.runs == 1
    assert "circular locking dependency" in f.message
    assert explore.check(p.lock_order_consistent, "dpor").ok


def test_dpor_explores_every_order_of_steps_as_dfs_does():
    # a step runs plain code the explorer does not see: all steps are dependent
    for prog in (p.check_then_act_locked, p.flag_poll, p.timer_poll, p.pipeline,
                 p.lock_order_consistent):
        counts = {s: explore.check(prog, s).runs for s in ("dfs", "dpor")}
        assert counts["dfs"] == counts["dpor"], (prog.__name__, counts)


def test_trace_table_has_one_column_per_task_and_the_await_lines():
    f = explore.check(p.check_then_act, "dpor").failures[0]
    table = f.trace_table()
    assert "CPU0 (main)" in table and "CPU1 (withdraw)" in table and "CPU2 (withdraw)" in table
    assert "yield" in table and "await asyncio.sleep(0)" in table and "[asyncprogs.py:" in table
    assert "tasks.py" not in table  # asyncio's own frames are not the user's lines


def test_replay_and_shrinking():
    f = explore.check(p.check_then_act, "dfs").failures[0]
    assert f.preemptions <= 1
    again = explore.replay(p.check_then_act, f.schedule)
    assert again.failures and again.failures[0].message == f.message
    clean = explore.replay(p.check_then_act, "0")  # no preemption: one after the other
    assert clean.ok


def test_event_queue_condition_semaphore_and_timers_are_explored():
    res = explore.check(p.pipeline, "dpor")
    assert res.ok and res.exhausted and res.runs > 1
    dl = explore.check(p.queue_never_fed, "dpor").failures[0]
    assert dl.kind == "deadlock" and "waits for: get Queue" in dl.message
    lost = explore.check(p.lost_wakeup, "dpor").failures[0]
    assert lost.kind == "deadlock" and "waits for: wait Event" in lost.message


def test_virtual_time_orders_timers_and_times_out_only_when_nothing_else_can_happen():
    t0 = time.perf_counter()
    res = explore.check(p.timers_in_order, "dfs")
    assert res.ok and res.exhausted
    assert explore.check(p.wait_for_times_out, "dpor").ok
    assert time.perf_counter() - t0 < 20  # 200 virtual seconds, not real ones


def test_polling_waits_for_the_others_and_a_lone_spinner_is_a_livelock():
    assert explore.check(p.flag_poll, "dfs").runs == 9
    assert explore.check(p.timer_poll, "dpor").ok  # time passes while a task polls
    res = explore.check(p.spins_forever, "dpor", max_steps=200)
    assert res.failures[0].kind == "hang" and "livelock" in res.failures[0].message


def test_a_task_exception_nobody_retrieves_fails_one_handled_does_not():
    f = explore.check(p.unretrieved_child_failure, "dpor").failures[0]
    assert f.kind == "assertion" and "child failed" in f.message
    assert explore.check(p.handled_child_failure, "dpor").ok


def test_real_io_and_executors_are_refused_by_name():
    async def uses_executor():
        await asyncio.get_running_loop().run_in_executor(None, print)

    f = explore.check(uses_executor, "dpor").failures[0]
    assert "run_in_executor()" in f.message and "real thread" in f.message

    async def uses_sleep_to_thread():
        await asyncio.to_thread(time.sleep, 0)

    assert "run_in_executor()" in explore.check(uses_sleep_to_thread, "dpor").failures[0].message


def test_blocking_on_a_real_socket_is_a_blocked_failure_not_a_hang():
    a, b = socket.socketpair()
    try:
        async def reads_a_socket():
            await asyncio.sleep(0)
            a.recv(1)

        t0 = time.monotonic()
        res = explore.check(reads_a_socket, "dpor", stall=1.0)
        assert time.monotonic() - t0 < 15
        f = res.failures[0]
        assert f.kind == "blocked" and "a.recv(1)" in f.message
    finally:
        b.close()


def test_timeout_is_honoured_for_a_step_that_never_awaits():
    async def busy():
        async def loop_forever():
            n = 0
            while True:
                n += 1

        await asyncio.gather(loop_forever())

    t0 = time.monotonic()
    res = explore.check(busy, "dpor", timeout=1.0, stall=None)
    assert time.monotonic() - t0 < 10
    assert res.stopped == "timeout" and not res.exhausted


def test_check_async_wants_an_async_function_and_asyncio_is_restored():
    with pytest.raises(TypeError, match="async function"):
        explore.check_async(lambda: None)
    assert explore.check_async(p.check_then_act_locked).ok
    lock_cls, sem_cls = asyncio.Lock, asyncio.Semaphore
    assert lock_cls.__module__ == "asyncio.locks" and sem_cls.__module__ == "asyncio.locks"
    assert asyncio.locks.Lock is lock_cls
    assert type(asyncio.Lock()).__module__ == "asyncio.locks"


ASYNC_PROGRAM = '''
import asyncio

import pytest


class Account:
    def __init__(self):
        self.balance = 100


async def _withdraw(acct, lock):
    if lock is None:
        if acct.balance >= 60:
            await asyncio.sleep(0)
            acct.balance -= 60
        return
    async with lock:
        if acct.balance >= 60:
            await asyncio.sleep(0)
            acct.balance -= 60


@pytest.mark.explore
async def test_racy():
    a = Account()
    await asyncio.gather(_withdraw(a, None), _withdraw(a, None))
    assert a.balance >= 0


@pytest.mark.explore(strategy="dfs")
async def test_locked():
    a = Account()
    lock = asyncio.Lock()
    await asyncio.gather(_withdraw(a, lock), _withdraw(a, lock))
    assert a.balance >= 0
'''


def test_cli_explores_an_async_test_and_replays_it(tmp_path, capsys):
    f = tmp_path / "test_async_bank.py"
    f.write_text(ASYNC_PROGRAM)
    assert cli.main([f"{f}::test_racy"]) == 1
    out = capsys.readouterr().out
    assert "assertion" in out and "CPU1 (_withdraw)" in out
    m = re.search(r"--replay '([^']+)'", out)
    assert m is not None
    assert cli.main([f"{f}::test_racy", "--replay", m.group(1)]) == 1
    assert "AssertionError" in capsys.readouterr().out
    assert cli.main([f"{f}::test_locked", "--strategy", "dfs"]) == 0
    assert "ok; 4 runs" in capsys.readouterr().out


def test_marker_explores_async_tests(pytester):
    pytester.makepyfile(test_user=ASYNC_PROGRAM)
    res = pytester.runpytest("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    text = res.stdout.str()
    assert "FAILED test_user.py::test_racy" in text
    assert "CPU1 (_withdraw)" in text and "replay: kvmlock explore" in text


def test_a_plain_test_calling_asyncio_run_is_explored_too():
    real_run = asyncio.run

    def test_sync():
        asyncio.run(p.check_then_act())

    def test_sync_locked():
        asyncio.run(p.check_then_act_locked())

    res = explore.check(test_sync, "dpor", stop_on_first=False)
    assert res.runs == 6 and res.failures[0].kind == "assertion"
    ok = explore.check(test_sync_locked, "dfs")
    assert ok.ok and ok.exhausted and ok.runs == 4
    assert asyncio.run is real_run and asyncio.runners.run is real_run
    asyncio.run(p.check_then_act_locked())  # a real loop again outside


def _inversion_keeping_coroutines(coros: list):
    """lock_order_inversion, recording every coroutine its tasks run."""

    async def body() -> None:
        a, b = asyncio.Lock(), asyncio.Lock()

        async def take(first, second) -> None:
            coros.append(asyncio.current_task().get_coro())
            async with first:
                await asyncio.sleep(0)
                async with second:
                    pass

        coros.append(asyncio.current_task().get_coro())
        await asyncio.gather(take(a, b), take(b, a))

    return body


def test_an_execution_that_ends_in_a_deadlock_leaves_no_coroutine_suspended():
    coros: list = []
    res = explore.check(_inversion_keeping_coroutines(coros), "dfs", lockdep=False,
                        stop_on_first=False, shrink=False)
    assert res.kinds() == {"deadlock"} and res.runs == 6
    assert len(coros) == 18
    # each was run to its end, or closed (its lock exits run) before its execution was over
    assert all(c.cr_frame is None for c in coros)


def test_an_ended_execution_collected_inside_a_later_one_changes_nothing_there():
    import gc

    from kvmlock import spawn
    from kvmlock.sync import Mutex

    def body() -> None:
        m = Mutex("later.m")

        def other() -> None:
            with m:
                pass

        t = spawn(other)
        with m:
            gc.collect()  # frees whatever earlier explorations left, here and now
        t.join()

    was = gc.isenabled()
    gc.disable()  # so that what the deadlocked executions left is still there
    try:
        dead = explore.check(p.lock_order_inversion, "dfs", lockdep=False, stop_on_first=False)
        assert dead.kinds() == {"deadlock"}
        del dead
        res = explore.check(body, stop_on_first=False)
    finally:
        if was:
            gc.enable()
    assert res.ok and res.exhausted and res.runs == 2, res.failures[0].message
