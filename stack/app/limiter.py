"""A concurrency limit whose capacity can change while requests wait."""
from __future__ import annotations

import asyncio


class ResizableLimiter:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self.waiting = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self):
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self.in_use < self.capacity)
            finally:
                self.waiting -= 1
            self.in_use += 1
        return self

    async def __aexit__(self, *exc):
        async with self._changed:
            self.in_use -= 1
            self._changed.notify()

    async def resize(self, capacity: int) -> None:
        async with self._changed:
            self.capacity = capacity
            self._changed.notify_all()
