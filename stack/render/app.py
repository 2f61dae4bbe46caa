"""The file every app replica reads (stack.app.config.AppConfig), for any addressing."""
from __future__ import annotations

from psycopg.conninfo import make_conninfo

from ..app.config import replica_lag_bound_s
from ..topology import Topology
from .addressing import Addressing
from .pgbouncer import DATABASE


def _dsn(at: Addressing, service: str, password: str) -> str:
    host, port = at.of(service)
    return make_conninfo(host=host, port=port, user="app", password=password, dbname=DATABASE)


def app_config(topology: Topology, secrets: dict, at: Addressing) -> dict:
    app = topology.app
    via_pgbouncer = topology.pgbouncer.enabled
    password = secrets["app_password"]
    redis_host, redis_port = at.of("redis")
    return {
        "ttl_s": topology.cache.ttl_s, "write_pool": app.write_pool, "read_pool": app.read_pool,
        "pool_timeout_s": app.pool_timeout_s, "pool_idle_s": app.pool_idle_s,
        "read_from": app.read_from, "concurrency": app.concurrency,
        "write_dsn": _dsn(at, "pgbouncer" if via_pgbouncer else "postgres-primary", password),
        "primary_dsn": _dsn(at, "postgres-primary", password),
        "replica_dsn": _dsn(at, "postgres-replica", password),
        "redis_url": f"redis://:{secrets['redis_password']}@{redis_host}:{redis_port}/0",
        "admin_token": secrets["admin_token"], "via_pgbouncer": via_pgbouncer,
        "replica_lag_bound_s": replica_lag_bound_s(topology),
    }
