"""The replicas' work-slot limiter: capacity holds, resizing wakes waiters, cancelling leaks nothing."""
import asyncio

from stack.app.limiter import ResizableLimiter


def test_capacity_is_respected_and_resize_wakes_waiters():
    async def scenario():
        limiter = ResizableLimiter(2)
        peak, running = 0, 0
        release = asyncio.Event()

        async def job():
            nonlocal peak, running
            async with limiter:
                running += 1
                peak = max(peak, running)
                await release.wait()
                running -= 1

        tasks = [asyncio.ensure_future(job()) for _ in range(6)]
        await asyncio.sleep(0.01)
        assert (limiter.in_use, limiter.waiting, peak) == (2, 4, 2)
        await limiter.resize(5)
        await asyncio.sleep(0.01)
        assert (limiter.in_use, limiter.waiting, peak) == (5, 1, 5)
        release.set()
        await asyncio.gather(*tasks)
        assert (limiter.in_use, limiter.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaks_no_slot():
    async def scenario():
        limiter = ResizableLimiter(1)
        gate = asyncio.Event()

        async def hold():
            async with limiter:
                await gate.wait()

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(hold())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.set()
        await holder
        assert (limiter.in_use, limiter.waiting) == (0, 0)
        async with limiter:           # the slot is free again
            assert limiter.in_use == 1

    asyncio.run(scenario())
