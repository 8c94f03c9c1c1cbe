"""Plain asyncio programs, written as a user would, for the explorer's asyncio tests."""

from __future__ import annotations

import asyncio


class Account:
    def __init__(self, balance: int = 100) -> None:
        self.balance = balance


async def check_then_act() -> None:
    """Two withdrawals check the balance, then await, then act: both can pass the check."""
    acct = Account()

    async def withdraw(n: int) -> None:
        if acct.balance >= n:
            await asyncio.sleep(0)  # an await between the check and the act
            acct.balance -= n

    await asyncio.gather(withdraw(60), withdraw(60))
    assert acct.balance >= 0, f"overdrawn: {acct.balance}"


async def check_then_act_locked() -> None:
    """The near-miss: the check and the act under one asyncio.Lock."""
    acct = Account()
    lock = asyncio.Lock()

    async def withdraw(n: int) -> None:
        async with lock:
            if acct.balance >= n:
                await asyncio.sleep(0)
                acct.balance -= n

    await asyncio.gather(withdraw(60), withdraw(60))
    assert acct.balance >= 0, f"overdrawn: {acct.balance}"


async def lock_order_inversion() -> None:
    """Two tasks take two asyncio locks in opposite orders, each awaiting in between."""
    a = asyncio.Lock()
    b = asyncio.Lock()

    async def ab() -> None:
        async with a:
            await asyncio.sleep(0)
            async with b:
                pass

    async def ba() -> None:
        async with b:
            await asyncio.sleep(0)
            async with a:
                pass

    await asyncio.gather(ab(), ba())


async def lock_order_consistent() -> None:
    """The near-miss: both tasks take a, then b."""
    a = asyncio.Lock()
    b = asyncio.Lock()

    async def ab() -> None:
        async with a:
            await asyncio.sleep(0)
            async with b:
                pass

    await asyncio.gather(ab(), ab())


async def _poll(delay: float) -> None:
    """A task polls a flag with sleep(0) while another sets it after ``asyncio.sleep(delay)``
    (0: one yield; else a virtual timer)."""
    flag: list[int] = []

    async def setter() -> None:
        await asyncio.sleep(delay)
        flag.append(1)

    async def poller() -> None:
        while not flag:
            await asyncio.sleep(0)

    await asyncio.gather(setter(), poller())


async def flag_poll() -> None:
    await _poll(0)


async def timer_poll() -> None:
    await _poll(0.01)


async def spins_forever() -> None:
    while True:
        await asyncio.sleep(0)


async def pipeline() -> None:
    """Producer, consumer and a waiter on a bounded Queue, an Event, a Condition and a
    Semaphore, in a TaskGroup."""
    ev = asyncio.Event()
    cond = asyncio.Condition()
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    sem = asyncio.Semaphore(2)
    out: list[int] = []

    async def produce() -> None:
        for i in range(2):
            await q.put(i)
        await q.join()
        ev.set()

    async def consume() -> None:
        for _ in range(2):
            out.append(await q.get())
            q.task_done()
        async with sem, cond:
            cond.notify_all()

    async def waiter() -> None:
        await ev.wait()
        async with asyncio.timeout(1):
            await asyncio.sleep(0.5)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce())
        tg.create_task(consume())
        tg.create_task(waiter())
    assert out == [0, 1]


async def lost_wakeup() -> None:
    """A waiter checks a flag, then waits on an Event that was set and cleared meanwhile."""
    ready = asyncio.Event()
    state = {"go": False}

    async def waiter() -> None:
        if not state["go"]:
            await asyncio.sleep(0)  # the window
            await ready.wait()

    async def notifier() -> None:
        state["go"] = True
        ready.set()
        ready.clear()

    await asyncio.gather(waiter(), notifier())


async def queue_never_fed() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()

    async def consumer() -> None:
        await q.get()

    await asyncio.gather(consumer())


async def unretrieved_child_failure() -> None:
    async def child() -> None:
        raise AssertionError("child failed")

    asyncio.get_running_loop().create_task(child())
    await asyncio.sleep(0)


async def handled_child_failure() -> None:
    async def child() -> None:
        raise ValueError("expected")

    t = asyncio.get_running_loop().create_task(child())
    try:
        await t
    except ValueError:
        pass


async def wait_for_times_out() -> None:
    ev = asyncio.Event()
    try:
        await asyncio.wait_for(ev.wait(), 5)
    except TimeoutError:
        return
    raise AssertionError("the wait cannot end any other way")


async def timers_in_order() -> None:
    order: list[str] = []

    async def sleeper(name: str, d: float) -> None:
        await asyncio.sleep(d)
        order.append(name)

    await asyncio.gather(sleeper("late", 200.0), sleeper("early", 100.0))
    assert order == ["early", "late"], order
    assert asyncio.get_running_loop().time() == 200.0
