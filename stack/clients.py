"""Talking to a running stack, whatever runs it (processes, containers, a swarm).

    from stack import clients
    clients.dsn(stack, "primary", dbname="postgres")   # "primary" | "standby" | "pgbouncer"
    clients.redis_client(stack).ping()
    clients.pgbouncer_admin(stack, "SHOW POOLS")
    clients.push_app_config(stack, 2)                  # replica app-2 re-reads its config file
    clients.postgres_settings(stack, "standby", ["recovery_min_apply_delay"])

`target` is a stack (anything with `.context()`: LocalStack, DockerStack ...) or what
its `.context()` returns: an object with `.ports` (stack.ports.Ports) and `.secrets`.
Every backend publishes every service on 127.0.0.1 at the same port offsets, so
one set of clients serves the sampler, the course, the labs and the tests.
"""
from __future__ import annotations

import json
import time
import urllib.request
from typing import Callable

import psycopg
import redis
from psycopg.conninfo import make_conninfo
from urllib.parse import quote

from .errors import ServiceFailedError, StackError
from .ports import HOST, Ports
from .render.addressing import IN_NETWORK
from .render.pgbouncer import DATABASE
from .shardmap import MAX_SHARDS

# The names a caller may use for each PostgreSQL endpoint, by the service that answers.
SERVERS = {"primary": "postgres-primary", "standby": "postgres-replica", "replica": "postgres-replica",
           "pgbouncer": "pgbouncer", "postgres-primary": "postgres-primary",
           "postgres-replica": "postgres-replica"}


def access(target):
    """The context (ports, secrets) of a stack, or `target` itself when it is one."""
    if hasattr(target, "ports") and hasattr(target, "secrets"):
        return target
    if hasattr(target, "context"):
        return target.context()
    raise StackError(f"target={type(target).__name__} is not allowed: a stack (LocalStack, DockerStack ...) "
                     f"or its context()")


def _port(ctx, service: str) -> int:
    return ctx.ports.of(service)


# -- PostgreSQL ----------------------------------------------------------------------------------
def server_service(server: str) -> str:
    """The service behind a server name: "primary", "standby", "pgbouncer", "shard-N" (or the service name)."""
    if server in SERVERS:
        return SERVERS[server]
    name = server[len("postgres-"):] if server.startswith("postgres-shard-") else server
    if name.startswith("shard-") and name[6:].isdigit() and 1 <= int(name[6:]) <= MAX_SHARDS:
        return f"postgres-{name}"
    raise StackError(f"server={server!r} is not allowed: one of 'primary', 'standby', 'pgbouncer', "
                     f"'shard-1' .. 'shard-{MAX_SHARDS}'")


def dsn(target, server: str = "primary", *, user: str = "postgres", dbname: str = DATABASE,
        connect_timeout: int = 2) -> str:
    """A libpq connection string for `server` ("primary", "standby" or "pgbouncer") as `user`."""
    service = server_service(server)
    ctx = access(target)
    password = postgres_password(ctx, user)
    return make_conninfo(host=HOST, port=_port(ctx, service), user=user, password=password,
                         dbname=dbname, connect_timeout=connect_timeout)


def postgres_password(target, user: str) -> str:
    """The stack's password for a PostgreSQL role it made: "postgres" (superuser) or "app"."""
    if user not in ("postgres", "app"):
        raise StackError(f"user={user!r} is not allowed: 'postgres' or 'app'")
    return access(target).secrets["postgres_password" if user == "postgres" else "app_password"]


def connect(target, server: str = "primary", **kwargs) -> psycopg.Connection:
    """An autocommit connection (PgBouncer in transaction mode needs no prepared statements)."""
    options = {k: kwargs.pop(k) for k in ("user", "dbname") if k in kwargs}
    extra = {"prepare_threshold": None} if server_service(server) == "pgbouncer" else {}
    return psycopg.connect(dsn(target, server, **options), autocommit=True, **extra, **kwargs)


def replication_status(target) -> dict:
    """What the primary says about its standby: state, sync mode and lag."""
    with connect(target, "primary", dbname="postgres") as conn:
        row = conn.execute(
            "SELECT state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,"
            " extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication").fetchone()
    if row is None:
        return {"state": "disconnected"}
    return {"state": row[0], "sync_state": row[1], "lag_bytes": row[2], "lag_s": row[3] or 0.0}


def postgres_settings(target, server: str, names) -> dict:
    """pg_settings' `setting` of each name, as the server has it in force now."""
    with connect(target, server, dbname="postgres") as conn:
        rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(names),))
        return dict(rows.fetchall())


def wait_in_force(what: str, read: Callable[[], dict], expect: dict, timeout: float = 5) -> None:
    """Until `read()` reports every value of `expect`; ServiceFailedError naming both if not in time."""
    deadline = time.monotonic() + timeout
    actual: dict = {}
    last_error = None
    while True:
        try:
            actual = read()
            if {k: actual.get(k) for k in expect} == expect:
                return
        except (psycopg.Error, redis.RedisError, OSError) as exc:   # restarting, or not listening yet
            last_error = exc
        if time.monotonic() > deadline:
            raise ServiceFailedError(f"{what} did not report the new settings within {timeout:g} s: "
                                     f"expected {expect}, it reports {actual}"
                                     + (f" (last error: {last_error})" if last_error and not actual else ""))
        time.sleep(0.005)


def wait_postgres_settings(target, server: str, expect: dict, timeout: float = 5) -> None:
    wait_in_force(server_service(server), lambda: postgres_settings(target, server, expect), expect, timeout)


def wait_replayed(target, timeout: float = 30) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    with connect(target, "primary", dbname="postgres") as primary:
        lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS replayed"
    wait_in_force("postgres-replica replaying the primary's WAL",
                  lambda: _one_row(target, "standby", query, lsn), {"replayed": True}, timeout)


def wait_streaming(target, timeout: float = 30) -> None:
    query = "SELECT count(*) > 0 AS streaming FROM pg_stat_replication WHERE state = 'streaming'"
    wait_in_force("streaming replication", lambda: _one_row(target, "primary", query), {"streaming": True}, timeout)


def _one_row(target, server: str, query: str, *args) -> dict:
    with connect(target, server, dbname="postgres") as conn:
        cur = conn.execute(query, args)
        return dict(zip([d.name for d in cur.description], cur.fetchone()))


# -- PgBouncer -------------------------------------------------------------------------------------
def pgbouncer_admin(target, command: str) -> list[dict]:
    """Run an admin console command (SHOW POOLS, SHOW STATS ...) and return rows as dicts."""
    # The admin console speaks only the simple query protocol, which ClientCursor uses.
    with psycopg.connect(dsn(target, "pgbouncer", dbname="pgbouncer"), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute(command)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def pgbouncer_set(target, key: str, value) -> None:
    """SET one setting on PgBouncer's admin console (in force at once; SHOW CONFIG reports it)."""
    with psycopg.connect(dsn(target, "pgbouncer", dbname="pgbouncer"), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(f"SET {key} = '{str(value)}'")


def pgbouncer_config(target) -> dict:
    return {row["key"]: row["value"] for row in pgbouncer_admin(target, "SHOW CONFIG")}


def wait_pgbouncer_config(target, expect: dict, timeout: float = 5) -> None:
    wait_in_force("pgbouncer", lambda: pgbouncer_config(target), expect, timeout)


# -- Redis -------------------------------------------------------------------------------------------
def redis_url(target) -> str:
    ctx = access(target)
    return f"redis://:{ctx.secrets['redis_password']}@{HOST}:{ctx.ports.redis}/0"


def redis_client(target) -> redis.Redis:
    return redis.Redis.from_url(redis_url(target), socket_timeout=2, decode_responses=True)


def set_redis_config(target, values: dict) -> None:
    """CONFIG SET each value, then wait until CONFIG GET reports all of them."""
    conn = redis_client(target)
    try:
        for key, value in values.items():
            conn.config_set(key, value)
        wait_in_force("redis", lambda: {k: conn.config_get(k).get(k) for k in values}, values)
    finally:
        conn.close()


# -- any service, for the field's own clients (psql, redis-cli, curl) -----------------------------------
def uri(target, service: str, *, user: str = "postgres", dbname: str = DATABASE, with_password: bool = True) -> str:
    """The URL a standard client takes for `service`: postgresql://... for a PostgreSQL server or
    PgBouncer (psql, pgcli, any libpq program), redis://... for Redis (redis-cli -u), http://...
    for nginx and each app replica (curl). with_password=False leaves a PostgreSQL password out
    (for PGPASSWORD: a command line is visible to every user in `ps`)."""
    name = service_name(service)
    ctx = access(target)
    if name == "redis":
        return redis_url(ctx)
    if name == "nginx":
        return f"http://{HOST}:{ctx.ports.nginx}/"
    if name.startswith("app-"):
        return app_url(ctx, int(name[4:]))
    password = "" if not with_password else ":" + quote(postgres_password(ctx, user), safe="")
    return f"postgresql://{user}{password}@{HOST}:{_port(ctx, name)}/{quote(dbname, safe='')}"


def service_name(service: str) -> str:
    """The name `status()` lists for what a learner calls `service`: "nginx", "redis", "app-N",
    "primary", "standby", "pgbouncer", "shard-N", or a service name itself."""
    if service in ("nginx", "redis") or (service.startswith("app-") and service[4:].isdigit()):
        return service
    try:
        return server_service(service)
    except StackError:
        raise StackError(f"service={service!r} is not allowed: 'nginx', 'redis', 'app-N', 'primary', 'standby', "
                         f"'pgbouncer' or 'shard-N' (or a service name from `python -m stack status`)") from None


# -- the app replicas ----------------------------------------------------------------------------------
def peer_address(target, service: str) -> tuple[str, int]:
    """Where a service of the stack reaches `service` (host, port): e.g. a postgres_fdw server on
    the primary naming a shard. Loopback ports for processes, the service name on a container network."""
    return access(target).addressing.of(service)


def app_port(target, index: int) -> int:
    """The host port of replica app-`index`: its fixed offset, or (Swarm: the engine picks one per
    task) the port the stack's context reports for it."""
    ctx = access(target)
    ports = getattr(ctx, "app_ports", None)
    if ports is None:
        return ctx.ports.app(index)
    if index not in ports:
        raise StackError(f"app-{index} has no published port here: the running replicas reachable from this "
                         f"host are {', '.join(f'app-{i}' for i in sorted(ports)) or 'none'}")
    return ports[index]


def app_url(target, index: int, path: str = "/") -> str:
    return f"http://{HOST}:{app_port(target, index)}{path}"


def get_json(url: str, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def push_app_config(target, index: int, expect: dict | None = None) -> dict:
    """Make replica app-`index` re-read its config file; with `expect`, check it reports those values."""
    ctx = access(target)
    request = urllib.request.Request(app_url(ctx, index, "/_admin/config"), method="POST",
                                     headers={"X-Admin-Token": ctx.secrets["admin_token"]}, data=b"")
    with urllib.request.urlopen(request, timeout=5) as resp:
        reported = json.loads(resp.read())
    if expect:
        actual = {k: reported.get(k) for k in expect}
        if actual != expect:
            raise ServiceFailedError(f"app-{index} did not take the new config: expected {expect}, "
                                     f"it reports {actual}")
    return reported


def profile_replica(target, index: int, seconds: float = 2.0, interval_ms: float = 1.0) -> dict:
    """Replica app-`index` samples its own Python stack for `seconds` (pyinstrument) and answers
    the frame tree: flat rows with id, parent, function, where, seconds, self_seconds."""
    ctx = access(target)
    request = urllib.request.Request(
        app_url(ctx, index, f"/_admin/profile?seconds={seconds:g}&interval_ms={interval_ms:g}"), method="POST",
        headers={"X-Admin-Token": ctx.secrets["admin_token"]}, data=b"")
    with urllib.request.urlopen(request, timeout=seconds + 10) as resp:
        return json.loads(resp.read())


def metrics(target, index: int) -> dict:
    return get_json(app_url(target, index, "/metrics"))


# -- is it answering? -----------------------------------------------------------------------------------
def probe(target, service: str) -> Callable[[], bool]:
    """A check that `service` answers from the host the way its health check asks it inside."""
    if service.startswith("app-"):
        index = int(service.split("-")[1])
        return lambda: get_json(app_url(target, index, "/health")).get("replica") == service
    if service == "nginx":
        ctx = access(target)
        url = f"http://{HOST}:{ctx.ports.nginx}/nginx-health"
        return lambda: urllib.request.urlopen(url, timeout=1).status == 200
    if service.startswith("postgres-"):
        def sql() -> bool:
            with connect(target, service, dbname="postgres") as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        return sql
    if service == "pgbouncer":
        return lambda: bool(pgbouncer_admin(target, "SHOW VERSION"))
    if service == "redis":
        def ping() -> bool:
            conn = redis_client(target)
            try:
                return bool(conn.ping())
            finally:
                conn.close()
        return ping
    raise StackError(f"service={service!r} is not allowed: one of postgres-primary, postgres-replica, "
                     f"pgbouncer, redis, nginx, app-N")


class StackAccess:
    """What a stack's context() gives when it has no processes of its own to describe
    (containers, services): the topology, its ports, the generated secrets."""

    addressing = IN_NETWORK             # one service reaches another by its name, on the network

    def __init__(self, topology, secrets: dict, app_ports: dict[int, int] | None = None):
        self.topology, self.secrets = topology, secrets
        self.app_ports = app_ports      # None: each replica at its fixed offset (Ports.app)

    @property
    def ports(self):
        return Ports(self.topology.base_port)


def wait_replicas_reconnected(target, indexes, timeout: float = 15) -> None:
    """Until every replica's breakers (primary, replica) are closed again: after a PostgreSQL
    restart, the stack is back only when the app serves from it, not when the server is up."""
    for index in indexes:
        wait_in_force(f"app-{index} reconnecting to postgres",
                      lambda i=index: {name: b["open"] for name, b in metrics(target, i)["failover"].items()},
                      {"primary": False, "replica": False}, timeout)


# -- addresses and WAL positions, for lessons --------------------------------------------------
def address(stack, server: str) -> tuple[str, int]:
    """(host, port) of "primary", "standby"/"replica" or "pgbouncer", as the running stack reports it."""
    if server not in SERVERS:
        raise ValueError(f"server={server!r} is not allowed: one of 'primary', 'standby', 'replica', 'pgbouncer'")
    info = stack.status()["services"].get(SERVERS[server]) or {}
    if info.get("state") != "running" or not info.get("address"):
        raise RuntimeError(f"{SERVERS[server]} is not running (state {info.get('state', 'absent')!r}): "
                           f"run stack.up() first")
    host, _, port = info["address"].rpartition(":")
    return host, int(port)


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> its byte position: the high 32 bits, then the low 32 bits (pure)."""
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) + int(low, 16)
