"""A time series of the running stack, one Sample per interval, taken by an asyncio task.

    sampler = Sampler(stack, interval_s=0.5)
    sampler.start()                 # in a notebook: returns at once, samples in the background
    ...
    sampler.frame()                 # pandas DataFrame, one row per sample
    await sampler.stop()

    async for sample in sampler.stream(): ...     # each new Sample as it comes

Nothing here blocks the event loop: the replicas are read with aiohttp, the
blocking clients (psycopg, redis, PgBouncer's console) run in threads.
Replicas are found from the applied topology at every sample, so scaling up
or down shows as replicas appearing in / leaving `Sample.replicas`.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import AsyncIterator, Callable

import aiohttp
import pandas as pd

from .model import (CacheSample, PoolerSample, PostgresSample, Rates, ReplicaSample, Sample,
                    hit_ratio)
from .probes import SAMPLER_ROUTES, PostgresProbe, RedisProbe, read_pgbouncer, replica_metrics

# A replica first seen younger than this is rated from its start (counters at zero),
# so a freshly added replica shows in the very first sample that reads it.
NEW_REPLICA_S = 2.5


class Sampler:
    def __init__(self, stack, interval_s: float = 0.5, keep: int = 7200,
                 on_sample: Callable[[Sample], None] | None = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.stack = stack
        self.interval_s = interval_s
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.listeners: list[Callable[[Sample], None]] = [on_sample] if on_sample else []
        self._rates = Rates()
        self._known: set[int] = set()          # replica indices that answered before
        self._last_t: float | None = None
        self._ctx = None
        self._postgres: dict[str, PostgresProbe] = {}
        self._redis: RedisProbe | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._queues: list[asyncio.Queue] = []
        self.last_error: str | None = None      # why the last failed round failed

    # -- running -------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Sample every interval_s in the background, until stop()."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="scalelab-sampler")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.close()

    async def run(self, seconds: float) -> list[Sample]:
        """Sample for `seconds` and return what was taken in that time."""
        taken: list[Sample] = []
        self.listeners.append(taken.append)
        try:
            self.start()
            await asyncio.sleep(seconds)
        finally:
            self.listeners.remove(taken.append)
            await self.stop()
        return taken

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _loop(self) -> None:
        baseline = True                        # the first reading only sets what rates start from
        next_tick = time.monotonic()
        while True:
            try:
                sample = await self.sample()
            except Exception as exc:   # noqa: BLE001 - e.g. the stack mid-change: try again next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if not baseline:
                    self._publish(sample)
                baseline = False
            # Fixed cadence: a slow round shortens the next wait instead of drifting.
            next_tick = max(next_tick + self.interval_s, time.monotonic())
            await asyncio.sleep(next_tick - time.monotonic())

    def _publish(self, sample: Sample) -> None:
        self.samples.append(sample)
        for listener in list(self.listeners):
            try:
                listener(sample)
            except Exception as exc:   # noqa: BLE001 - a plotting bug must not stop the sampling
                self.last_error = f"listener {listener!r}: {type(exc).__name__}: {exc}"
        for queue in self._queues:
            queue.put_nowait(sample)

    async def stream(self) -> AsyncIterator[Sample]:
        """Each new sample as it is taken (start() the sampler first)."""
        queue: asyncio.Queue = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    # -- results -------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        return samples_frame(self.samples)

    # -- one sample ----------------------------------------------------------------
    async def sample(self) -> Sample:
        """Read everything once; rates are against the previous call (absent on the first)."""
        if self._ctx is None:
            self._ctx = await asyncio.to_thread(self.stack.context)
            self._session = aiohttp.ClientSession()
        elif getattr(self._ctx, "app_ports", None) is not None:
            # The replicas' ports are the engine's choice per task (Swarm): a scale or a replaced
            # task changes them, so they are asked again each sample (the servers' ports are fixed).
            self._ctx = await asyncio.to_thread(self.stack.context)
        topology = await asyncio.to_thread(self.stack.applied)
        problems: list[str] = []

        async def blocking(name: str, read):
            try:
                return await asyncio.to_thread(read)
            except Exception as exc:   # noqa: BLE001 - one source down must not stop the others
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
                return None

        wanted = set(range(1, topology.app.replicas + 1)) if topology else set()
        readings, primary, standby, cache, pooler = await asyncio.gather(
            self._read_replicas(wanted, problems),
            blocking("postgres-primary", self._probe("primary").read),
            blocking("postgres-replica", self._probe("replica").read),
            blocking("redis", self._redis_probe().read),
            blocking("pgbouncer", lambda: read_pgbouncer(self._ctx))
            if topology is None or topology.pgbouncer.enabled else _none())
        replicas = self._replica_samples(readings)
        now = time.time()
        interval = now - self._last_t if self._last_t else 0.0
        self._last_t = now
        return Sample(t=now, interval_s=interval, replicas=replicas,
                      total_rps=sum(r.rps for r in replicas.values()),
                      cache=self._cache_sample(replicas, cache),
                      postgres=self._postgres_sample(primary, standby),
                      pgbouncer=PoolerSample(**pooler) if pooler else None, problems=problems)

    async def _read_replicas(self, wanted: set[int], problems: list[str]) -> dict[str, dict]:
        indices = sorted(wanted | self._known)
        timeout = max(0.2, 0.8 * self.interval_s)
        results = await asyncio.gather(*(replica_metrics(self._session, self._ctx, i, timeout)
                                         for i in indices), return_exceptions=True)
        readings = {}
        for index, result in zip(indices, results):
            name = f"app-{index}"
            if isinstance(result, BaseException):
                if index not in wanted:          # scaled away: it is gone, forget its counters
                    self._known.discard(index)
                    self._rates.forget(f"{name}.")
                elif index in self._known:       # should be there but did not answer
                    problems.append(f"{name}: {type(result).__name__}: {result}")
                continue
            self._known.add(index)
            readings[name] = result
        return readings

    def _replica_samples(self, readings: dict[str, dict]) -> dict[str, ReplicaSample]:
        rated = {}
        for name, m in readings.items():
            t = m["time"]
            counters = {"served": m["requests"] - sum(m["by_route"].get(r, 0) for r in SAMPLER_ROUTES),
                        "errors": m["errors"], "hits": m["cache"]["hits"], "misses": m["cache"]["misses"]}
            if m["uptime_s"] < NEW_REPLICA_S:
                for key in counters:
                    self._rates.seed(f"{name}.{key}", t - m["uptime_s"], 0)
            rates = {key: self._rates.rate(f"{name}.{key}", t, value) for key, value in counters.items()}
            if rates["served"] is None:
                continue                          # first reading of an older replica: no rate yet
            rated[name] = ReplicaSample(
                name=name, rps=rates["served"], share=0.0,
                in_flight=max(0, m["in_flight"] - 1),      # minus our own /metrics request
                errors_per_s=rates["errors"], cache_hits_per_s=rates["hits"],
                cache_misses_per_s=rates["misses"], busy=m["work"]["busy"], queued=m["work"]["queued"],
                concurrency=m["work"]["concurrency"], pools=m.get("pools", {}))
        total = sum(r.rps for r in rated.values())
        for rep in rated.values():
            rep.share = rep.rps / total if total > 0 else 0.0
        return dict(sorted(rated.items(), key=lambda item: int(item[0].split("-")[1])))

    def _cache_sample(self, replicas: dict[str, ReplicaSample], cache: dict | None) -> CacheSample:
        s = CacheSample()
        if replicas:
            s.app_hits_per_s = sum(r.cache_hits_per_s for r in replicas.values())
            s.app_misses_per_s = sum(r.cache_misses_per_s for r in replicas.values())
            s.app_hit_ratio = hit_ratio(s.app_hits_per_s, s.app_misses_per_s)
        if cache:
            t = cache["t"]
            s.redis_hits_per_s = self._rates.rate("redis.hits", t, cache["hits"])
            s.redis_misses_per_s = self._rates.rate("redis.misses", t, cache["misses"])
            s.redis_hit_ratio = hit_ratio(s.redis_hits_per_s, s.redis_misses_per_s)
            s.evicted_per_s = self._rates.rate("redis.evicted", t, cache["evicted"])
            s.evicted_keys, s.keys, s.used_memory = cache["evicted"], cache["keys"], cache["used_memory"]
        return s

    def _postgres_sample(self, primary: dict | None, standby: dict | None) -> PostgresSample:
        s = PostgresSample()
        for role, reading in (("primary", primary), ("replica", standby)):
            if reading is None:
                continue
            s.connections[role] = reading["connections"]
            tps = self._rates.rate(f"pg.{role}.commits", reading["t"], reading["xact_commit"])
            if tps is not None:
                s.tps[role] = tps
        if primary is not None:
            replication = primary["replication"]
            s.replication_state = replication["state"]
            s.lag_bytes = replication.get("lag_bytes")
            s.replay_lag_s = replication.get("replay_lag_s")
        if standby is not None:
            s.lag_s = standby["staleness_s"]
        return s

    # -- connections ---------------------------------------------------------------
    def _probe(self, role: str) -> PostgresProbe:
        if role not in self._postgres:
            self._postgres[role] = PostgresProbe(self._ctx, role)
        return self._postgres[role]

    def _redis_probe(self) -> RedisProbe:
        if self._redis is None:
            self._redis = RedisProbe(self._ctx)
        return self._redis

    async def close(self) -> None:
        """Close the kept-open connections (start() opens them again)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        probes = list(self._postgres.values()) + ([self._redis] if self._redis else [])
        self._postgres, self._redis, self._ctx = {}, None, None
        for probe in probes:
            await asyncio.to_thread(probe.close)


async def _none():
    return None


def samples_frame(samples) -> pd.DataFrame:
    """One row per sample, indexed by seconds since the first one."""
    rows = [s.row() for s in samples]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame.index = pd.Index(frame["t"] - frame["t"].iloc[0], name="elapsed_s")
    return frame
