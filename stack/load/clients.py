"""The two HTTP clients a run can use, behind one small interface, and error classes.

Both have `send(prepared) -> (status, X-Replica or None, perf_counter at
completion)`, `pool_waits` and `close()`. "fast" (fastclient.py) is the
default for http:// because it leaves more CPU to the server under test;
"aiohttp" handles https and anything unusual.
"""
from __future__ import annotations

import asyncio
import math
import sys
import time

from .fastclient import ConnectFailed, FastClient, forwarded_for
from .spec import LoadSpec


def classify(exc: BaseException) -> str:
    """The error class of a request that got no response: connect, timeout or other."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):   # aiohttp's subclass them
        return "timeout"
    if isinstance(exc, ConnectFailed):
        return "connect"
    aiohttp = sys.modules.get("aiohttp")     # imported only by a run that uses it (0.2 s of every import)
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    return "other"


class AiohttpClient:
    """aiohttp's ClientSession with a bounded TCPConnector (one per source address)."""

    def __init__(self, limit: int, timeout_s: float, local_addr: str | None = None):
        import aiohttp
        self.limit = limit
        self.pool_waits = 0
        self._busy = 0
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0,
                                         local_addr=(local_addr, 0) if local_addr else None)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            headers={"User-Agent": "scalelab-load",
                     **(forwarded_for(local_addr) if local_addr else {})})

    async def send(self, request) -> tuple[int, str | None, float]:
        if self._busy >= self.limit:
            self.pool_waits += 1               # aiohttp queues it until a connection is free
        self._busy += 1
        try:
            async with self._session.request(request.method, request.url, data=request.data,
                                              headers=request.headers) as response:
                await response.read()
                return response.status, response.headers.get("X-Replica"), time.perf_counter()
        finally:
            self._busy -= 1

    async def close(self) -> None:
        await self._session.close()


def make_clients(spec: LoadSpec) -> list:
    """One client per source address (or one); the connection limit is split between them."""
    addresses = spec.source_addresses or (None,)
    limit = math.ceil(spec.pool_size / len(addresses))
    if spec.client_kind == "fast":
        url = spec.parsed_url
        return [FastClient(url.host, url.port, limit, spec.timeout_s, a) for a in addresses]
    return [AiohttpClient(limit, spec.timeout_s, a) for a in addresses]
