"""Counters one replica keeps, served as JSON at /metrics."""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from .connections import ConnectionCounter


@dataclass
class Metrics:
    replica: str
    started_at: float = field(default_factory=time.time)
    requests: int = 0
    in_flight: int = 0
    errors: int = 0                  # responses with status >= 500
    client_errors: int = 0           # 4xx
    cache_hits: int = 0
    cache_misses: int = 0
    cache_errors: int = 0            # Redis unreachable: served from the database instead
    db_queries: int = 0
    read_failovers: int = 0          # reads the replica failed or did not answer, served by the primary
    # Total seconds spent per layer, so rates and means come from differences of samples.
    layer_seconds: dict = field(default_factory=lambda: defaultdict(float))
    by_route: dict = field(default_factory=lambda: defaultdict(int))
    # TCP connections the traffic came on (not counting /metrics, /health, admin calls)
    connections: ConnectionCounter = field(default_factory=ConnectionCounter)
    read_sources: dict = field(default_factory=lambda: defaultdict(int))   # replica / primary / cache
    by_shard: dict = field(default_factory=lambda: defaultdict(int))       # statements per shard server

    def to_dict(self, pools: dict, work: dict, failover: dict | None = None, process: dict | None = None) -> dict:
        return {"replica": self.replica, "uptime_s": round(time.time() - self.started_at, 3),
                "time": time.time(), "requests": self.requests, "in_flight": self.in_flight,
                "errors": self.errors, "client_errors": self.client_errors,
                "cache": {"hits": self.cache_hits, "misses": self.cache_misses, "errors": self.cache_errors},
                "db_queries": self.db_queries, "layer_seconds": dict(self.layer_seconds),
                "by_route": dict(self.by_route), "connections": {"opened": self.connections.opened,
                                                                  "recent": self.connections.recent},
                "pools": pools, "work": work,
                "read_sources": dict(self.read_sources), "read_failovers": self.read_failovers,
                "failover": failover or {}, "process": process or {}, "by_shard": dict(self.by_shard)}


def process_stats() -> dict:
    """This process's own memory and CPU, as the kernel counts them (no third-party module:
    the app's image stays small). Resident memory from /proc on Linux; elsewhere the peak."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)   # macOS: bytes; Linux: KiB
    return {"rss_mb": round(rss / 2**20, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}
