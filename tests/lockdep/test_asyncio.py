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


async def takes(lock):
    async with lock:
        await asyncio.sleep(0)


async def takes_other(lock):
    async with lock:
        await asyncio.sleep(0)


def abba_through(wait):
    """Two tasks: the first holds ``a`` and waits (by ``wait``) for a task taking ``b``; the
    second holds ``b`` and waits for one taking ``a``. One after the other: no hang."""
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def first():
            async with a:
                await wait(takes(b))

        async def second():
            async with b:
                await wait(takes_other(a))

        await asyncio.create_task(first())
        await asyncio.create_task(second())

    return main


def same_order_through(wait):
    async def main():
        a, b = asyncio.Lock(), asyncio.Lock()

        async def first():
            async with a:
                await wait(takes(b))

        for _ in range(2):
            await asyncio.create_task(first())
        async with b:  # b alone, and the task taking a run while nothing is held
            pass
        await wait(takes_other(a))

    return main


async def by_await(coro):
    await asyncio.create_task(coro)


async def by_gather(coro):
    await asyncio.gather(coro, asyncio.sleep(0))


async def by_wait(coro):
    await asyncio.wait([asyncio.create_task(coro)])


async def by_wait_for(coro):
    await asyncio.wait_for(asyncio.create_task(coro), None)


WAYS = [by_await, by_gather, by_wait, by_wait_for]


@pytest.mark.parametrize("wait", WAYS, ids=[w.__name__ for w in WAYS])
def test_abba_between_two_tasks_awaits_is_reported(wait):
    assert run(abba_through(wait)) == ["circular"]
    text = str(lockdep.reports()[0])
    assert "task:takes" in text and "task:takes_other" in text


@pytest.mark.parametrize("wait", WAYS, ids=[w.__name__ for w in WAYS])
def test_awaits_in_one_order_stay_silent(wait):
    assert run(same_order_through(wait)) == []


@pytest.mark.parametrize("wait", WAYS[1:], ids=[w.__name__ for w in WAYS[1:]])
def test_awaiting_through_gather_wait_or_wait_for_a_task_needing_your_lock_is_caught(wait):
    """Reported before the wait can hang: raise mode raises it there."""
    async def main():
        lock = asyncio.Lock()
        await asyncio.create_task(takes(lock))  # the role: a `takes` task takes the lock
        async with lock:
            with pytest.raises(lockdep.LockdepError):
                await wait(takes(lock))

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]


def test_bounded_or_first_completed_waits_add_no_dependency():
    async def main():
        lock = asyncio.Lock()
        await asyncio.create_task(takes(lock))
        async with lock:
            t = asyncio.create_task(takes(lock))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(t), 0.01)  # gives up: cannot hang
            done, _ = await asyncio.wait([t, asyncio.create_task(asyncio.sleep(0))],
                                         return_when=asyncio.FIRST_COMPLETED)
            assert t not in done
            await asyncio.wait([t], timeout=0.01)
        await t

    assert run(main) == []


def make_event():
    return asyncio.Event()  # one creation site: one class, as for locks


def test_waiting_for_an_event_whose_setter_needs_your_lock_is_reported():
    async def main():
        lock = asyncio.Lock()

        async def setter(ev):
            async with lock:
                ev.set()  # the event is set only once its setter has the lock

        async def waiter(ev):
            async with lock:
                with pytest.raises(lockdep.LockdepError):
                    await ev.wait()  # would wait forever: the setter waits for the lock

        await asyncio.create_task(setter(make_event()))
        ev = make_event()
        w = asyncio.create_task(waiter(ev))
        await w
        ev.set()

    lockdep.set_mode("raise")
    assert run(main) == ["circular"]
    (r,) = lockdep.reports()
    assert " in setter" in str(r) and " in waiter" in str(r)


async def waiting_holding(lock, ev):
    """A task that holds ``lock`` while it waits for ``ev``, started and left waiting."""
    async def waiter():
        async with lock:
            await ev.wait()

    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    return w


def test_the_event_case_found_from_the_other_side_too():
    async def main():
        lock = asyncio.Lock()
        ev = make_event()
        w = await waiting_holding(lock, ev)
        ev.set()  # (set by the main task, holding nothing: this run does not hang)
        await w
        async with lock:
            make_event().set()  # a setter of that class holding the lock: the cycle

    assert run(main) == ["circular"]


def test_events_set_and_waited_without_a_shared_lock_stay_silent():
    async def main():
        lock, other = asyncio.Lock(), asyncio.Lock()
        ev = make_event()
        w = await waiting_holding(lock, ev)
        async with other:
            ev.set()  # set under another lock: no cycle
        await w
        async with lock:
            free = asyncio.Event()  # another class, set under the lock ...
            free.set()
        free = asyncio.Event()
        t = asyncio.create_task(free.wait())  # ... and waited for without any lock held
        await asyncio.sleep(0)
        async with lock:
            free.set()
        await t

    assert run(main) == []
