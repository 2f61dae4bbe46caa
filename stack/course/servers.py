"""What lessons ask the stack's own servers (backend-neutral, through stack.clients).

Lessons and checks ask Redis and PostgreSQL what they did (INFO, TTL,
pg_stat_statements), never the configuration.

    r = redis_client(stack)                     # redis.Redis, decode_responses=True
    with pg(stack, "primary") as conn: ...      # psycopg, as the postgres superuser
    user_reads(stack)                           # {"primary": n, "replica": n}: lookups each server ran
"""
from __future__ import annotations

from contextlib import contextmanager

import psycopg
import redis

from .. import clients

ROLES = {"primary": "primary", "replica": "standby"}
# The statement the app runs for GET /users/{id} (stack/app/service.py), as pg_stat_statements
# normalises it: recognised by the columns only a user lookup by id selects.
USER_LOOKUP = "%FROM users WHERE id = $1%"


def redis_client(stack) -> redis.Redis:
    """Redis (decode_responses=True), through the one backend-neutral client module."""
    return clients.redis_client(stack)


def dsn(stack, role: str = "primary", user: str = "postgres") -> str:
    return clients.dsn(stack, ROLES[role], user=user)


@contextmanager
def pg(stack, role: str = "primary", user: str = "postgres"):
    with psycopg.connect(dsn(stack, role, user), autocommit=True) as conn:
        yield conn


def ensure_pg_stat_statements(stack, replay_timeout_s: float = 10.0) -> None:
    """The extension's view in the app database (created on the primary; the standby replays it).

    When this call creates it, it waits until the standby has replayed that too: a count read from
    the standby right after would find no view (Swarm, CI41: "relation pg_stat_statements does
    not exist"). A standby that is down is waited for no longer than `replay_timeout_s`."""
    with pg(stack, "primary") as conn:
        try:
            created = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone() is None
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
        except psycopg.errors.ObjectNotInPrerequisiteState:
            raise RuntimeError("PostgreSQL was started before pg_stat_statements was preloaded: restart the "
                               "stack once (stack.down(); stack.up())") from None
    if created:
        try:
            clients.wait_replayed(stack, timeout=replay_timeout_s)
        except clients.ServiceFailedError:
            pass                    # the standby is down: user_reads counts it as 0


def statement_calls(stack, pattern: str, role: str = "primary") -> int:
    """How many times the server ran statements whose text matches `pattern` (SQL LIKE)."""
    with pg(stack, role) as conn:
        row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
                           (pattern,)).fetchone()
    return int(row[0])


def user_reads(stack) -> dict[str, int]:
    """User lookups by id each PostgreSQL server has run (its own pg_stat_statements count)."""
    ensure_pg_stat_statements(stack)
    out = {}
    for role in ROLES:
        try:
            out[role] = statement_calls(stack, USER_LOOKUP, role)
        except (psycopg.OperationalError, RuntimeError):
            out[role] = 0          # a server that is down ran nothing
    return out


def redis_stats(stack) -> dict:
    """keyspace hits/misses, evictions, keys and memory, as Redis INFO reports them."""
    r = redis_client(stack)
    info = r.info()
    return {"hits": info["keyspace_hits"], "misses": info["keyspace_misses"], "evicted": info["evicted_keys"],
            "keys": r.dbsize(), "used_memory": info["used_memory"], "maxmemory": info["maxmemory"],
            "policy": info["maxmemory_policy"]}
