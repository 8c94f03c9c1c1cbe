"""Two asyncio tasks take the same two locks in opposite orders.

The tasks run one after the other, so this run never hangs; interleaved at their awaits they
would. `kvmlock lockdep examples/async_shop.py` reports it from this one run.
"""

import asyncio

stock = asyncio.Lock()
orders = asyncio.Lock()


async def place_order():
    async with stock:
        await asyncio.sleep(0)
        async with orders:
            pass


async def cancel_order():
    async with orders:
        async with stock:
            pass


async def main():
    await asyncio.create_task(place_order())
    await asyncio.create_task(cancel_order())
    print("both tasks done: this run did not hang")


asyncio.run(main())
