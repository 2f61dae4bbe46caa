"""What one replica reads at start and again on every config push."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path


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

    @classmethod
    def load(cls, path: str | Path) -> "AppConfig":
        data = json.loads(Path(path).read_text())
        return cls(**{f.name: data[f.name] for f in fields(cls)})
