"""A restocker waits for a delivery while it holds the stock room; the supplier needs the stock
room before it can announce a delivery.

This week the delivery was announced from the front desk, which holds nothing, so this run
never hangs. The week the supplier announces it, the restocker waits for the supplier and the
supplier for the restocker. `kvmlock lockdep examples/async_delivery.py` reports it from this
one run: waiting for an asyncio.Event is a wait-for dependency, as awaiting a task is.
"""

import asyncio


def new_delivery() -> asyncio.Event:
    delivered = asyncio.Event()  # one creation site: every delivery is one class
    return delivered


async def supplier(stock, delivered):
    async with stock:  # the supplier unloads in the stock room ...
        delivered.set()  # ... and only then announces the delivery


async def restocker(stock, delivered):
    async with stock:
        await delivered.wait()  # waits, in the stock room, for the delivery


async def main():
    stock = asyncio.Lock()
    await asyncio.create_task(supplier(stock, new_delivery()))  # last week: nobody waiting
    tuesday = new_delivery()
    waiting = asyncio.create_task(restocker(stock, tuesday))
    await asyncio.sleep(0)
    tuesday.set()  # this week the front desk announces it, holding nothing
    await waiting
    print("restocked: this run did not hang")


asyncio.run(main())
