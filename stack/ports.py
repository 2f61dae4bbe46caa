"""Where each service listens: base_port plus a fixed offset.

Fixed offsets keep addresses predictable for a learner (the entry point is
always http://127.0.0.1:<base_port>) and let two stacks coexist when their
base ports are at least 64 apart.
"""
from __future__ import annotations

from dataclasses import dataclass

from .topology import MAX_REPLICAS, Topology

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    base: int

    @property
    def nginx(self) -> int:
        return self.base

    @property
    def redis(self) -> int:
        return self.base + 1

    @property
    def primary(self) -> int:
        return self.base + 2

    @property
    def replica(self) -> int:
        return self.base + 3

    @property
    def pgbouncer(self) -> int:
        return self.base + 4

    def app(self, index: int) -> int:
        """Port of app replica `index` (1-based)."""
        if not 1 <= index <= MAX_REPLICAS:
            raise ValueError(f"replica index {index} outside 1..{MAX_REPLICAS}")
        return self.base + 10 + index

    def all_for(self, topology: Topology) -> dict[str, int]:
        """Every port the topology needs, by service name."""
        ports = {"nginx": self.nginx, "redis": self.redis, "postgres-primary": self.primary,
                 "postgres-replica": self.replica}
        if topology.pgbouncer.enabled:
            ports["pgbouncer"] = self.pgbouncer
        for i in range(1, topology.app.replicas + 1):
            ports[f"app-{i}"] = self.app(i)
        return ports
