"""The sampler against a real stack (base_port 22000): rates, cache hit ratio, lag, scaling."""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from stack import clients
from conftest import running_stack, shifted_port
from stack.load import LoadSpec, RequestMix, run_load_async
from stack.sample import Sampler

PORT = shifted_port(22000)
URL = f"http://127.0.0.1:{PORT}"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(state_dir):
    with running_stack(state_dir, PORT, replicas=3, strategy="round_robin") as s:
        yield s


def load(mix: RequestMix, rate: float, seconds: float) -> LoadSpec:
    return LoadSpec(url=URL, mode="open", rate=rate, duration_s=seconds, mix=mix)


async def loop_stalls(into: list) -> None:
    """How late each 20 ms sleep wakes up: what a kernel would feel while sampling."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(0.02)
        into.append(time.perf_counter() - before - 0.02)


async def sample_during(stack, *specs: LoadSpec, interval_s: float = 0.5, stalls: list | None = None):
    """Samples taken while the loads run one after the other, and the sampler."""
    sampler = Sampler(stack, interval_s=interval_s)
    sampler.start()
    monitor = asyncio.ensure_future(loop_stalls(stalls if stalls is not None else []))
    try:
        for spec in specs:
            await run_load_async(spec)
        await asyncio.sleep(interval_s * 1.2)      # the last interval's traffic
    finally:
        monitor.cancel()
        await sampler.stop()
    return list(sampler.samples), sampler


def test_rates_are_sane_and_shares_add_up(stack):
    stalls: list[float] = []
    samples, sampler = asyncio.run(sample_during(stack, load(RequestMix.single("/users/{key}"), 200, 3.0),
                                                 stalls=stalls))
    assert len(samples) >= 5
    # Blocking clients run in threads: the loop (and the load sharing it) keeps its pace.
    assert len(stalls) > 50 and max(stalls) < 0.25, max(stalls)
    for s in samples:
        assert not s.problems, s.problems
        assert set(s.replicas) == {"app-1", "app-2", "app-3"}
        for r in s.replicas.values():
            assert r.rps >= 0 and r.errors_per_s >= 0 and r.in_flight >= 0
        assert all(v >= 0 for v in s.postgres.tps.values())
        if s.total_rps > 0:
            assert math.isclose(sum(r.share for r in s.replicas.values()), 1.0, abs_tol=1e-9)
    # Mid-run samples see the offered 200 req/s, split about evenly by round robin.
    middle = samples[1:-2]
    assert all(100 <= s.total_rps <= 320 for s in middle), [round(s.total_rps) for s in middle]
    assert all(0.2 <= r.share <= 0.47 for s in middle for r in s.replicas.values())
    assert set(samples[-1].postgres.connections) == {"primary", "replica"}
    assert samples[-1].pgbouncer is not None and samples[-1].cache.used_memory > 0

    frame = sampler.frame()
    assert len(frame) == len(samples)
    assert {"app-1.rps", "app-3.share", "cache.app_hit_ratio", "pg.lag_bytes", "pg.primary.tps",
            "pgbouncer.cl_waiting"} <= set(frame.columns)
    assert (frame["total_rps"] >= 0).all()


def test_hit_ratio_rises_when_the_same_key_is_read_again(stack):
    clients.redis_client(stack.context()).flushdb()
    cold = load(RequestMix.single("/users/{key}"), 200, 2.0)      # 400 reads over 10,000 keys: misses
    hot = load(RequestMix.single("/users/7"), 200, 2.0)           # one key: hits after the first read
    samples, _ = asyncio.run(sample_during(stack, cold, hot))
    ratios = [s.cache.app_hit_ratio for s in samples if s.cache.app_hit_ratio is not None]
    redis_ratios = [s.cache.redis_hit_ratio for s in samples if s.cache.redis_hit_ratio is not None]
    assert len(ratios) >= 6
    assert max(ratios[:2]) < 0.3, ratios
    assert min(ratios[-2:]) > 0.95, ratios
    assert redis_ratios[0] < 0.3 and redis_ratios[-1] > 0.95, redis_ratios
    assert samples[-1].cache.keys >= 300


def test_lag_appears_with_replica_delay_and_writes(stack):
    stack.apply(replica_delay_ms=1500)
    try:
        writes = load(RequestMix.users(read_ratio=0.0), 50, 2.5)
        samples, _ = asyncio.run(sample_during(stack, writes))
    finally:
        stack.apply(replica_delay_ms=0)
    assert max(s.postgres.lag_bytes or 0 for s in samples) > 0
    assert max(s.postgres.lag_s or 0 for s in samples) > 0.5
    # The writes commit on the primary, through PgBouncer.
    assert max(s.postgres.tps.get("primary", 0) for s in samples) > 10
    assert max(s.pgbouncer.sv_active + s.pgbouncer.sv_idle for s in samples) > 0


def test_replicas_leaving_disappear_from_the_samples(stack):
    async def scenario():
        sampler = Sampler(stack, interval_s=0.5)
        sampler.start()
        task = asyncio.ensure_future(run_load_async(load(RequestMix.single("/users/{key}"), 150, 4.0)))
        await asyncio.sleep(1.2)
        await asyncio.to_thread(stack.apply, replicas=2)
        await task
        await sampler.stop()
        return list(sampler.samples)

    try:
        samples = asyncio.run(scenario())
    finally:
        stack.apply(replicas=3)
    assert "app-3" in samples[0].replicas
    assert all(set(s.replicas) == {"app-1", "app-2"} for s in samples[-3:]), [list(s.replicas) for s in samples]
    assert all(s.total_rps > 0 and not s.problems for s in samples[-3:])
