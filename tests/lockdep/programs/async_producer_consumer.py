"""expect: clean
A producer sets an event under its own lock; consumers wait for it holding a different lock;
tasks gathered and waited for without a shared lock."""
import asyncio


async def main():
    produce_lock, consume_lock = asyncio.Lock(), asyncio.Lock()
    ready = asyncio.Event()
    items = []

    async def producer():
        async with produce_lock:
            items.append(1)
            ready.set()

    async def consumer():
        async with consume_lock:
            await ready.wait()
            return len(items)

    waiting = [asyncio.create_task(consumer()) for _ in range(3)]
    await asyncio.sleep(0)
    await asyncio.gather(producer())
    done, _ = await asyncio.wait(waiting)
    assert {t.result() for t in done} == {1}


asyncio.run(main())
