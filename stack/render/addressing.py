"""Where one service reaches another: the one parameter that differs between backends.

    loopback(Ports(18080)).of("postgres-primary")  -> ("127.0.0.1", 18082)   processes
    IN_NETWORK.of("postgres-primary")              -> ("postgres-primary", 5432)  containers
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ports import HOST, Ports

# Inside a container network every service listens on its usual port.
INTERNAL_PORTS = {"nginx": 80, "app": 8000, "postgres": 5432, "pgbouncer": 6432, "redis": 6379}


def internal_port(service: str) -> int:
    if service.startswith("app-") or service == "app":
        return INTERNAL_PORTS["app"]
    if service.startswith("postgres"):
        return INTERNAL_PORTS["postgres"]
    if service not in INTERNAL_PORTS:
        raise ValueError(f"service={service!r} is not allowed: one of {', '.join(INTERNAL_PORTS)}, "
                         f"postgres-primary, postgres-replica, app-N")
    return INTERNAL_PORTS[service]


@dataclass(frozen=True)
class Addressing:
    ports: Ports | None = None      # None: service names and internal ports

    def of(self, service: str) -> tuple[str, int]:
        if self.ports is not None:
            return HOST, self.ports.of(service)
        return service, internal_port(service)

    def hostport(self, service: str) -> str:
        host, port = self.of(service)
        return f"{host}:{port}"


def loopback(ports: Ports) -> Addressing:
    return Addressing(ports)


IN_NETWORK = Addressing(None)
