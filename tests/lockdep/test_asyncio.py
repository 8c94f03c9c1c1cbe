"""asyncio locks validated per task: inversions between tasks' awaits, awaiting a task that
needs a lock you hold, tasks ending with locks held -- and silence for correct programs."""

import asyncio

import pytest

from kvmlock import lockdep


def run(main):
    with lockdep.instrument_threading():
        asyncio.run(main())
    return [r.kind for r in lockdep.reports()]


def test_abba_between_two_tasks_is_reported_from_one_run():
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def one():
            async with a:
                await asyncio.sleep(0)
                async with b:
                    pass

        async def two():
            async with b:
                async with a:
                    pass

        await asyncio.create_task(one())  # one after the other: this run cannot hang
        await asyncio.create_task(two())

    assert run(main) == ["circular"]
    (r,) = lockdep.reports()
    assert r.task.endswith("(two)") and " in one" in str(r) and " in two" in str(r)
    assert "locks.py" not in r.where  # the user's line, not asyncio's


def test_same_order_in_many_tasks_and_conditions_stay_silent():
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()
        cond = asyncio.Condition()
        limit = asyncio.Semaphore(3)  # counting: not a lock
        ready = []

        async def worker(i):
            async with limit:
                async with a:
                    await asyncio.sleep(0)
                    async with b:
                        pass
                async with cond:
                    ready.append(i)
                    cond.notify_all()

        async def waiter():
            async with cond:
                await cond.wait_for(lambda: len(ready) == 5)

        w = asyncio.create_task(waiter())
        await asyncio.gather(*(worker(i) for i in range(5)))
        await w

    assert run(main) == []


def test_awaiting_a_task_that_needs_a_lock_you_hold_is_reported():
    """Reported before the await can hang: raise mode raises it at the await."""
    async def main():
        lock = asyncio.Lock()

        async def needs_lock():
            async with lock:
                pass

        await asyncio.create_task(needs_lock())  # taking the lock: task -> lock
        await lock.acquire()
        t = asyncio.create_task(needs_lock())
        with pytest.raises(lockdep.LockdepError):
            await t  # would wait forever: t waits for the lock this task holds
        lock.release()
        await t

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    assert "task:" in str(lockdep.reports()[0])


def test_awaiting_a_task_without_a_shared_lock_is_silent():
    async def main():
        lock, other = asyncio.Lock(), asyncio.Lock()

        async def child(depth):
            async with other:
                pass
            if depth:
                await asyncio.create_task(child(depth - 1))  # same coroutine, nested

        async with lock:
            await asyncio.create_task(child(3))

    assert run(main) == []


def test_task_ending_with_a_lock_held_is_reported():
    async def main():
        lock = asyncio.Lock()

        async def leaky():
            await lock.acquire()

        await asyncio.create_task(leaky())
        lock.release()

    assert run(main) == ["held_at_exit"]
    assert "(leaky)" in lockdep.reports()[0].task


def test_cancelled_waiter_leaves_nothing_held():
    async def main():
        lock = asyncio.Lock()
        await lock.acquire()
        t = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        lock.release()
        async with lock:
            pass

    assert run(main) == []


def test_asyncio_is_restored():
    orig = asyncio.Lock
    with lockdep.instrument_threading():
        assert asyncio.Lock is not orig
    assert asyncio.Lock is orig
