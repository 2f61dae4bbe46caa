"""The one place the dashboard touches the load generator.

`run_load(load, on_interval)` runs a load until it ends or is cancelled and
calls `on_interval(LoadInterval)` once per interval. `load` is either a
`stack.load` spec (run with `stack.load.run_load_async`) or a `SimpleLoad`,
a small closed-loop generator kept here so dashboards and tests work on
their own. Whatever the generator reports is normalised to `LoadInterval`.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp


@dataclass
class LoadInterval:
    t: float                      # wall-clock time the interval ended (time.time())
    throughput_rps: float         # responses per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    replicas: dict[str, int] = field(default_factory=dict)   # responses per X-Replica


def normalise(snapshot) -> LoadInterval:
    """A LoadInterval from stack.load's IntervalSnapshot (or a dict with the same names).

    Stamped with the arrival time: the generator's own clock counts from its start,
    the dashboard's from the run's start, and the callback comes at the interval's end.
    """
    get = snapshot.get if isinstance(snapshot, dict) else (lambda k, d=None: getattr(snapshot, k, d))
    errors = get("errors", 0)
    return LoadInterval(t=time.time(), throughput_rps=float(get("throughput_rps", 0.0) or 0.0),
                        p50_ms=get("p50_ms"), p95_ms=get("p95_ms"), p99_ms=get("p99_ms"),
                        errors=sum(errors.values()) if isinstance(errors, dict) else int(errors or 0),
                        replicas=dict(get("replicas", {}) or {}))


async def run_load(load, on_interval: Callable[[LoadInterval], None]):
    """Run `load`, reporting each interval; returns the generator's own result."""
    if isinstance(load, SimpleLoad):
        return await load.run(on_interval)
    from ..load import run_load_async        # imported late: the dashboard works without it
    result = run_load_async(load, on_interval=lambda snapshot: on_interval(normalise(snapshot)))
    return await result if inspect.isawaitable(result) else result


@dataclass
class SimpleLoad:
    """Closed loop: `concurrency` workers, each sending the next request as soon as
    the last one answered, cycling through `requests` (paths, or (method, path, json))."""
    url: str
    requests: tuple = ("/users/1",)
    concurrency: int = 4
    duration_s: float | None = None     # None: until cancelled
    interval_s: float = 0.5

    def _cycle(self):
        for item in itertools.cycle(self.requests):
            yield ("GET", item, None) if isinstance(item, str) else (tuple(item) + (None,))[:3]

    async def run(self, on_interval: Callable[[LoadInterval], None]) -> None:
        latencies: list[float] = []
        replicas: dict[str, int] = {}
        errors = 0
        requests = self._cycle()
        deadline = time.monotonic() + self.duration_s if self.duration_s else float("inf")
        base = self.url.rstrip("/")

        async def worker(session: aiohttp.ClientSession):
            nonlocal errors
            while time.monotonic() < deadline:
                method, path, body = next(requests)
                start = time.perf_counter()
                try:
                    async with session.request(method, base + path, json=body) as resp:
                        await resp.read()
                        replica = resp.headers.get("X-Replica", "?")
                        replicas[replica] = replicas.get(replica, 0) + 1
                        errors += resp.status >= 500
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.05)      # do not spin on a refused connection
                latencies.append(time.perf_counter() - start)

        def report(elapsed: float):
            nonlocal latencies, replicas, errors
            done, latencies = sorted(latencies), []
            pick = (lambda q: done[min(len(done) - 1, int(q * len(done)))] * 1000) if done else (lambda q: None)
            on_interval(LoadInterval(time.time(), len(done) / elapsed, pick(0.5), pick(0.95), pick(0.99),
                                     errors, replicas))
            replicas, errors = {}, 0

        async def reporter():
            last = time.monotonic()
            while True:
                await asyncio.sleep(self.interval_s)
                now = time.monotonic()
                report(now - last)
                last = now

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=self.concurrency)) as session:
            ticker = asyncio.create_task(reporter())
            try:
                await asyncio.gather(*(worker(session) for _ in range(self.concurrency)))
            finally:
                ticker.cancel()
