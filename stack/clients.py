"""Connections to the stack's databases, the same on every backend.

    from stack import clients
    clients.dsn(stack, "replica")                 # libpq string for the streaming replica
    with clients.connect(stack, "pgbouncer") as conn: ...
    clients.pgbouncer_admin(stack, "SHOW POOLS")  # rows as dicts

Addresses come from `stack.status()` (what is running, wherever it runs) and the
passwords from the stack's own generated secrets (`stack.context().secrets`),
so lessons and checks never hard-code a port or a password.
"""
from __future__ import annotations

import psycopg

from .render.pgbouncer import DATABASE

SERVERS = {"primary": "postgres-primary", "replica": "postgres-replica", "pgbouncer": "pgbouncer"}
USERS = {"app": "app_password", "postgres": "postgres_password"}


def address(stack, server: str) -> tuple[str, int]:
    """(host, port) of "primary", "replica" or "pgbouncer", as the stack reports it."""
    if server not in SERVERS:
        raise ValueError(f"server={server!r} is not allowed: one of {', '.join(map(repr, SERVERS))}")
    info = stack.status()["services"].get(SERVERS[server]) or {}
    if not info.get("address"):
        raise RuntimeError(f"{SERVERS[server]} reports no address (state {info.get('state', 'absent')!r}): "
                           f"run stack.up() first")
    host, _, port = info["address"].rpartition(":")
    return host, int(port)


def conninfo(host: str, port: int, user: str, password: str, dbname: str = DATABASE,
             connect_timeout: float = 2) -> str:
    """A libpq key=value string (pure: no I/O)."""
    if user not in USERS:
        raise ValueError(f"user={user!r} is not allowed: one of {', '.join(map(repr, USERS))}")
    return psycopg.conninfo.make_conninfo(host=host, port=port, user=user, password=password, dbname=dbname,
                                          connect_timeout=int(max(1, connect_timeout)))


def dsn(stack, server: str = "primary", user: str = "app", dbname: str = DATABASE) -> str:
    """The DSN for one server ("primary", "replica", "pgbouncer"); user "app" or "postgres"."""
    host, port = address(stack, server)
    secrets = stack.context().secrets
    if user not in USERS:
        raise ValueError(f"user={user!r} is not allowed: one of {', '.join(map(repr, USERS))}")
    return conninfo(host, port, user, secrets[USERS[user]], dbname)


def connect(stack, server: str = "primary", user: str = "app", dbname: str = DATABASE,
            **kwargs) -> psycopg.Connection:
    """An autocommit connection. Through PgBouncer (transaction mode) no prepared statements."""
    kwargs.setdefault("autocommit", True)
    if server == "pgbouncer":
        kwargs.setdefault("prepare_threshold", None)
    return psycopg.connect(dsn(stack, server, user, dbname), **kwargs)


def pgbouncer_admin(stack, command: str) -> list[dict]:
    """An admin console command (SHOW POOLS, SHOW STATS, ...) as a list of row dicts."""
    # The console speaks only the simple query protocol, which ClientCursor uses.
    with psycopg.connect(dsn(stack, "pgbouncer", "postgres", "pgbouncer"), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute(command)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> its byte position: the high 32 bits, then the low 32 bits (pure)."""
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) + int(low, 16)
