"""Held-out: asyncio programs under the explorer.

A task's step (from one suspension to the next) is one visible operation and any two steps of
different tasks are dependent, so the counts are the interleavings of the tasks' steps.
"""

from __future__ import annotations

import asyncio

from kvmlock import explore


def withdrawals(results, locked):
    async def body():
        account = {"balance": 100}
        lock = asyncio.Lock()

        async def withdraw():
            if locked:
                async with lock:
                    if account["balance"] >= 100:
                        await asyncio.sleep(0)
                        account["balance"] -= 100
            else:
                if account["balance"] >= 100:  # step 1: check, then suspend
                    await asyncio.sleep(0)
                    account["balance"] -= 100  # step 2: act

        await asyncio.gather(withdraw(), withdraw())
        results.append(account["balance"])
        assert account["balance"] >= 0, "overdrawn"

    return body


def test_check_then_act_across_await_all_interleavings():
    # a1 a2 b / a1 b1 a2 b2 / a1 b1 b2 a2 and the mirrored three; the second task's check
    # fails when it starts after the first acted. 4 of the 6 overdraw.
    results: list = []
    res = explore.check(withdrawals(results, locked=False), strategy="dpor",
                        stop_on_first=False, shrink=False)
    assert res.exhausted
    assert res.runs == 6
    assert sorted(results) == [-100] * 4 + [0] * 2
    assert set(res.kinds()) == {"assertion"}


def test_check_then_act_found_and_replays():
    res = explore.check(withdrawals([], locked=False), strategy="dpor")
    assert set(res.kinds()) == {"assertion"}
    rep = explore.replay(withdrawals([], locked=False), res.failure.schedule)
    assert set(rep.kinds()) == {"assertion"}


def test_check_then_act_under_lock_clean():
    # the second task either waits for the lock or starts after the first released it: 4
    results: list = []
    res = explore.check(withdrawals(results, locked=True), strategy="dpor")
    assert res.ok and res.exhausted
    assert res.runs == 4
    assert set(results) == {0}


def lock_pair(opposite):
    async def body():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def one(x, y):
            async with x:
                await asyncio.sleep(0)
                async with y:
                    pass

        await asyncio.gather(one(a, b), one(b, a) if opposite else one(a, b))

    return body


def test_asyncio_lock_order_deadlock_found():
    res = explore.check_async(lock_pair(True), strategy="dpor", lockdep=False)
    assert set(res.kinds()) == {"deadlock"}


def test_asyncio_lock_order_lockdep_reports():
    res = explore.check(lock_pair(True), strategy="dpor", lockdep=True)
    assert not res.ok
    reports = {r.kind for f in res.failures for r in f.lockdep_reports}
    assert "circular" in reports


def test_asyncio_same_order_clean():
    res = explore.check(lock_pair(False), strategy="dpor", lockdep=True)
    assert res.ok and res.exhausted


def test_asyncio_virtual_time():
    async def body():
        order = []

        async def sleeper(d, tag):
            await asyncio.sleep(d)
            order.append(tag)

        await asyncio.gather(sleeper(200, "late"), sleeper(0.1, "early"))
        assert order == ["early", "late"]

    res = explore.check(body, strategy="dpor", timeout=60)
    assert res.ok and res.exhausted
    assert res.elapsed < 60
