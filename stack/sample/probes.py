"""Raw readings from each part of the stack, one function per source.

The replicas are read with aiohttp (async); PostgreSQL, Redis and PgBouncer
with their blocking clients, which the sampler runs in threads. Every reading
carries the time it was taken, so rates use the reading's own clock.
Connections are kept open between samples: a new PostgreSQL connection per
half second would cost a fork each time.
"""
from __future__ import annotations

import time

import aiohttp
import psycopg

from .. import clients
from ..render.pgbouncer import DATABASE

# The sampler's own calls, left out of a replica's request count.
SAMPLER_ROUTES = ("metrics", "health")

_ACTIVITY = """
SELECT count(*), count(*) FILTER (WHERE state = 'active'), count(*) FILTER (WHERE state LIKE 'idle%')
FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"""
_COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = %s"
_REPLICATION = """
SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
       extract(epoch FROM replay_lag)::float8
FROM pg_stat_replication LIMIT 1"""
# On the standby: how old the last replayed transaction is, while WAL waits to be replayed.
_STALENESS = """
SELECT CASE WHEN pg_last_wal_receive_lsn() IS NULL
             OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8 END"""


async def replica_metrics(session: aiohttp.ClientSession, ctx, index: int,
                          timeout_s: float) -> dict:
    url = clients.app_url(ctx, index, "/metrics")
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        resp.raise_for_status()
        return await resp.json()


class PostgresProbe:
    """One kept-open connection to one server (to the `postgres` database, so the
    probe's own transactions do not count in the app database's TPS)."""

    def __init__(self, ctx, role: str):
        self.ctx, self.role = ctx, role
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = clients.connect(self.ctx, "primary" if self.role == "primary" else "standby", dbname="postgres")
        return self._conn

    def read(self) -> dict:
        try:
            return self._read(self._connection())
        except psycopg.OperationalError:
            self.close()      # the server restarted: reconnect once, then give up for this round
            return self._read(self._connection())

    def _read(self, conn: psycopg.Connection) -> dict:
        total, active, idle = conn.execute(_ACTIVITY).fetchone()
        commits = conn.execute(_COMMITS, (DATABASE,)).fetchone()
        reading = {"t": time.time(), "connections": {"total": total, "active": active, "idle": idle},
                   "xact_commit": commits[0] if commits else None}
        if self.role == "primary":
            row = conn.execute(_REPLICATION).fetchone()
            reading["replication"] = ({"state": row[0], "lag_bytes": row[1], "replay_lag_s": row[2] or 0.0}
                                      if row else {"state": "disconnected"})
        else:
            reading["staleness_s"] = conn.execute(_STALENESS).fetchone()[0]
        return reading

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class RedisProbe:
    def __init__(self, ctx):
        self.client = clients.redis_client(ctx)

    def read(self) -> dict:
        info = self.client.info()        # default sections: stats, memory, keyspace among them
        return {"t": time.time(), "hits": info.get("keyspace_hits", 0), "misses": info.get("keyspace_misses", 0),
                "evicted": info.get("evicted_keys", 0), "used_memory": info.get("used_memory"),
                "keys": sum(db.get("keys", 0) for name, db in info.items()
                            if name.startswith("db") and isinstance(db, dict))}

    def close(self) -> None:
        self.client.close()


def read_pgbouncer(ctx) -> dict:
    """SHOW POOLS summed over the app's pools (the admin console's own pool left out)."""
    rows = [r for r in clients.pgbouncer_admin(ctx, "SHOW POOLS") if r.get("database") != "pgbouncer"]
    return {key: sum(int(r.get(key) or 0) for r in rows)
            for key in ("cl_active", "cl_waiting", "sv_active", "sv_idle")}
