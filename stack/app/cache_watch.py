"""The cache's breaker: a Redis that is down costs a request nothing, on every backend.

A request whose cache call finds Redis unreachable (refused, reset, timed out, its name
gone: a crashed container's name no longer resolves) opens the breaker; while it is
open, cache calls are skipped at once and count as misses. A watch probes Redis in the
background, on its own connection in its own thread, and closes the breaker after
CLOSE_AFTER good probes in a row. Without it, every read during an outage would wait
out the connect timeout (and, on Docker, a name lookup that can take seconds).

Only an unreachable Redis opens it: a refused command (noeviction's OOM) is an answer.
"""
from __future__ import annotations

import asyncio
import concurrent.futures

import redis

from .failover import CLOSE_AFTER, PROBE_INTERVAL_S, PROBE_TIMEOUT_S, Breaker, _first_line

# Errors that say "Redis did not answer", as opposed to an answer that refuses.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


class CacheWatch:
    """Drives the breaker of one replica's Redis."""

    def __init__(self, url_of):
        self.url_of = url_of
        self.breaker = Breaker("redis")
        # One thread: a probe blocked in a slow name lookup never holds more than this one.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cache-watch")
        self._probe: concurrent.futures.Future | None = None

    def failed(self, exc: BaseException) -> None:
        """A request found Redis unreachable."""
        self.breaker.trip(f"cache call failed: {_first_line(exc)}")

    def _ping(self) -> bool:
        client = redis.Redis.from_url(self.url_of(), socket_timeout=PROBE_TIMEOUT_S,
                                      socket_connect_timeout=PROBE_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()

    async def probe_once(self) -> None:
        breaker = self.breaker
        if not breaker.open:
            return
        if self._probe is None or self._probe.done():
            self._probe = self._thread.submit(self._ping)
        try:
            ok = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._probe)), PROBE_TIMEOUT_S * 2)
        except (asyncio.TimeoutError, *UNREACHABLE, redis.RedisError):
            ok = False
        if not ok:
            breaker.good_probes = 0
            return
        breaker.good_probes += 1
        if breaker.good_probes >= CLOSE_AFTER:
            breaker.open = False

    async def run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # noqa: BLE001 - the watch must outlive any one probe
                self.breaker.good_probes = 0
            await asyncio.sleep(PROBE_INTERVAL_S)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
