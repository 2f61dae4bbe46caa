"""What one replica reads at start and again on every config push."""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path


def replica_lag_bound_s(topology) -> float:
    """Reads leave the replica past this lag: a deliberate apply delay (lesson 4) plus 2 s,
    so the read-your-writes anomaly stays visible while a stuck replica stops serving."""
    return topology.postgres.replica_delay_ms / 1000 + 2.0


@dataclass(frozen=True)
class AppConfig:
    ttl_s: int
    write_pool: int
    read_pool: int
    pool_timeout_s: float
    pool_idle_s: float
    read_from: str          # "replica" or "primary"
    concurrency: int
    write_dsn: str          # through PgBouncer when it is enabled
    primary_dsn: str        # straight to the primary (reads with read_from="primary")
    replica_dsn: str
    redis_url: str
    admin_token: str
    via_pgbouncer: bool
    # Reads leave a replica whose replay lags more than this (the deliberate apply delay plus a margin).
    replica_lag_bound_s: float = 2.0
    # {"read": map, "write": [map, ...], "dsns": {"1": dsn, ...}} when users are sharded, else None.
    shards: dict | None = None

    @classmethod
    def load(cls, path: str | Path) -> "AppConfig":
        data = json.loads(Path(path).read_text())
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING})
