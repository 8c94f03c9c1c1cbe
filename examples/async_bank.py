"""An unmodified asyncio program under the explorer: a check-then-act race across an await.

A withdrawal checks the balance, awaits (a real program would call a payment service there),
then takes the money. The test starts one withdrawal, lets the loop run it for two turns, then
makes a second: on a real event loop the first has finished by then, and the test passes.
The explorer tries the other orders in which the tasks reach their awaits.
"""

import asyncio
import sys

from kvmlock import explore


class Account:
    def __init__(self) -> None:
        self.balance = 100


async def withdraw(acct: Account, amount: int, lock: asyncio.Lock | None) -> None:
    if lock is not None:
        async with lock:
            return await withdraw(acct, amount, None)
    if acct.balance >= amount:
        await asyncio.sleep(0)  # the await between the check and the act
        acct.balance -= amount


async def test_two_withdrawals(locked: bool = False) -> None:
    acct = Account()
    lock = asyncio.Lock() if locked else None
    first = asyncio.create_task(withdraw(acct, 60, lock))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first one is done by now ... on this event loop
    await withdraw(acct, 60, lock)
    await first
    assert acct.balance >= 0, f"overdrawn: {acct.balance}"


async def test_two_withdrawals_locked() -> None:
    await test_two_withdrawals(locked=True)


if __name__ == "__main__":
    asyncio.run(test_two_withdrawals())
    print("asyncio.run: passed")
    test = test_two_withdrawals_locked if "--locked" in sys.argv else test_two_withdrawals
    print(explore.check(test))
