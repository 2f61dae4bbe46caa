"""A concurrency limit whose capacity can change while requests wait.

Like asyncio.Semaphore, a release hands the slot straight to the oldest waiter
(no lock to re-acquire), so a busy slot is never idle between two requests.
"""
from __future__ import annotations

import asyncio
from collections import deque


class ResizableLimiter:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def __aenter__(self):
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return self
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter          # resolved by a release that already counted us in
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()   # we were handed a slot but will not use it
            else:
                self._waiters.remove(waiter)
            raise
        return self

    async def __aexit__(self, *exc):
        self._release()

    def _release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    async def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()
