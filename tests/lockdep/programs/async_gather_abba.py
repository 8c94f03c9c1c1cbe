"""expect: circular
Two tasks each hold one lock and gather a task that needs the other: one run, no hang."""
import asyncio


async def restock(lock):
    async with lock:
        await asyncio.sleep(0)


async def audit(lock):
    async with lock:
        await asyncio.sleep(0)


async def main():
    a, b = asyncio.Lock(), asyncio.Lock()

    async def first():
        async with a:
            await asyncio.gather(restock(b))

    async def second():
        async with b:
            await asyncio.gather(audit(a))

    await first()
    await second()


asyncio.run(main())
