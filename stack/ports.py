"""Where each service listens: base_port plus a fixed offset.

Fixed offsets keep addresses predictable for a learner (the entry point is
always http://127.0.0.1:<base_port>) and let two stacks coexist when their
base ports are at least 64 apart.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from .errors import PortInUseError
from .shardmap import MAX_SHARDS
from .topology import MAX_REPLICAS, Topology

HOST = "127.0.0.1"
SHARD_OFFSET = 40      # shards at base+41..base+48; the block's highest port: base+48 (< 64 apart)


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

    def shard(self, index: int) -> int:
        """Port of shard server `index` (1-based): base + 40 + index, clear of the replicas' 11..26."""
        if not 1 <= index <= MAX_SHARDS:
            raise ValueError(f"shard index {index} outside 1..{MAX_SHARDS}")
        return self.base + SHARD_OFFSET + index

    def app(self, index: int) -> int:
        """Port of app replica `index` (1-based)."""
        if not 1 <= index <= MAX_REPLICAS:
            raise ValueError(f"replica index {index} outside 1..{MAX_REPLICAS}")
        return self.base + 10 + index

    def of(self, service: str) -> int:
        """The host port of a service by name: "nginx", "redis", "postgres-primary", "app-3" ..."""
        fixed = {"nginx": self.nginx, "redis": self.redis, "postgres-primary": self.primary,
                 "postgres-replica": self.replica, "pgbouncer": self.pgbouncer}
        if service in fixed:
            return fixed[service]
        if service.startswith("app-"):
            return self.app(int(service.split("-")[1]))
        if service.startswith("postgres-shard-"):
            return self.shard(int(service.rsplit("-", 1)[1]))
        raise ValueError(f"no port for service {service!r}")

    def all_for(self, topology: Topology) -> dict[str, int]:
        """Every port the topology needs, by service name."""
        services = ["nginx", "redis", "postgres-primary", "postgres-replica"]
        if topology.pgbouncer.enabled:
            services.append("pgbouncer")
        services += [f"app-{i}" for i in range(1, topology.app.replicas + 1)]
        services += [f"postgres-shard-{i}" for i in range(1, topology.postgres.shards + 1)]
        return {service: self.of(service) for service in services}


def highest_offset(topology: Topology) -> int:
    """The largest offset from base_port the topology listens on."""
    return max(Ports(0).all_for(topology).values())


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen here (SO_REUSEADDR, as servers bind: TIME_WAIT is no obstacle)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def refuse_ports_in_use(topology: Topology, running) -> None:
    """Raise PortInUseError for the first port the topology needs that another program holds.

    `running`: services of this stack that already run (their ports are theirs).
    """
    for service, port in Ports(topology.base_port).all_for(topology).items():
        if service not in running and not port_is_free(port):
            raise PortInUseError(
                f"port {port} ({service}) on {HOST} is already in use by another program. "
                f"Stop that program, or choose other ports: Topology(base_port=...) "
                f"(this stack uses base_port..base_port+{highest_offset(topology)}). "
                f"Nothing was changed.")
