"""What one sample holds: plain dataclasses, flattened to one row for pandas."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ReplicaSample:
    name: str
    rps: float                  # requests/s served, not counting the sampler's own /metrics calls
    share: float                # this replica's part of all replicas' rps, 0..1 (0 when idle)
    in_flight: int
    errors_per_s: float         # responses >= 500
    cache_hits_per_s: float
    cache_misses_per_s: float
    busy: int                   # /work requests running now
    queued: int                 # /work requests waiting for a slot
    concurrency: int
    pools: dict = field(default_factory=dict)   # pool name -> {max_size, size, idle, waiting, timeouts}


@dataclass
class CacheSample:
    app_hits_per_s: float | None = None
    app_misses_per_s: float | None = None
    app_hit_ratio: float | None = None        # None when no cached reads in the interval
    redis_hits_per_s: float | None = None
    redis_misses_per_s: float | None = None
    redis_hit_ratio: float | None = None
    evicted_per_s: float | None = None
    evicted_keys: int | None = None
    keys: int | None = None
    used_memory: int | None = None


@dataclass
class PostgresSample:
    replication_state: str | None = None      # 'streaming', or 'disconnected'
    lag_bytes: int | None = None              # WAL the replica has not replayed yet
    lag_s: float | None = None                # how stale the replica is (0 when caught up)
    replay_lag_s: float | None = None         # the primary's view (pg_stat_replication.replay_lag)
    connections: dict = field(default_factory=dict)   # server -> {total, active, idle}
    tps: dict = field(default_factory=dict)           # server -> commits/s in the app database


@dataclass
class PoolerSample:
    cl_active: int = 0
    cl_waiting: int = 0
    sv_active: int = 0
    sv_idle: int = 0


@dataclass
class Sample:
    t: float                     # wall-clock time the sample was taken (time.time())
    interval_s: float            # seconds since the previous sample
    replicas: dict[str, ReplicaSample]
    total_rps: float
    cache: CacheSample
    postgres: PostgresSample
    pgbouncer: PoolerSample | None        # None when PgBouncer is off or unreachable
    problems: list[str] = field(default_factory=list)   # probes that failed this time

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def row(self) -> dict:
        """One flat row: 'app-1.rps', 'cache.app_hit_ratio', 'pg.primary.tps', 'pgbouncer.cl_waiting' ..."""
        row = {"t": self.t, "interval_s": self.interval_s, "total_rps": self.total_rps,
               "replicas": len(self.replicas)}
        for name, rep in self.replicas.items():
            for key in ("rps", "share", "in_flight", "errors_per_s", "cache_hits_per_s",
                        "cache_misses_per_s", "busy", "queued"):
                row[f"{name}.{key}"] = getattr(rep, key)
        for key, value in dataclasses.asdict(self.cache).items():
            row[f"cache.{key}"] = value
        pg = self.postgres
        row.update({"pg.lag_bytes": pg.lag_bytes, "pg.lag_s": pg.lag_s, "pg.replay_lag_s": pg.replay_lag_s})
        for server, counts in pg.connections.items():
            for key, value in counts.items():
                row[f"pg.{server}.{key}"] = value
        for server, tps in pg.tps.items():
            row[f"pg.{server}.tps"] = tps
        if self.pgbouncer is not None:
            for key, value in dataclasses.asdict(self.pgbouncer).items():
                row[f"pgbouncer.{key}"] = value
        return row


def hit_ratio(hits: float | None, misses: float | None) -> float | None:
    if hits is None or misses is None or hits + misses <= 0:
        return None
    return hits / (hits + misses)


class Rates:
    """Per-second rates of counters, from the difference with the last reading of each.

    Each counter keeps its own last (time, value), so a source missed in one
    round (a slow replica) gets a rate over the longer gap next time.
    """

    def __init__(self):
        self._last: dict[str, tuple[float, float]] = {}

    def rate(self, key: str, t: float, value: float | None) -> float | None:
        if value is None:
            return None
        last = self._last.get(key)
        self._last[key] = (t, value)
        if last is None or t <= last[0]:
            return None
        delta = value - last[1]
        if delta < 0:            # the counter restarted (process restarted): count from zero
            delta = value
        return delta / (t - last[0])

    def seed(self, key: str, t: float, value: float) -> None:
        """A known earlier reading (e.g. zero at a replica's start time)."""
        self._last.setdefault(key, (t, value))

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._last if k.startswith(prefix)]:
            del self._last[key]
