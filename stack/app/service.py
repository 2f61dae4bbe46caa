"""The user service: cache-aside reads from the replica, writes to the primary.

Run one replica with
    SCALELAB_REPLICA=app-1 SCALELAB_APP_CONFIG=.../config.json \\
    uvicorn stack.app.service:create_app --factory --port 18091

Every response names the replica (`X-Replica`) and how long each layer took
(`Server-Timing: cache;dur=.., db;dur=.., app;dur=..`, in milliseconds). A read
also says which server answered it (`X-Read-Source: replica|primary|cache`, and
`read;desc=...` in Server-Timing): reads leave a dead or lagging replica for the
primary within a second and come back when it is healthy (see failover.py).
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import os
import time
from contextlib import asynccontextmanager

import psycopg
import redis.asyncio as aioredis
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import failover
from .config import AppConfig
from .connections import SCOPE_KEY as CONNECTION_KEY
from .limiter import ResizableLimiter
from .metrics import Metrics, process_stats

USER_COLUMNS = "id, name, email, region, updated_at"
WRITABLE_FIELDS = {"name": str, "email": str, "region": str}
MAX_WORK_MS = 10_000
WORK_KINDS = ("io", "cpu", "db", "db_write")


class HTTPProblem(Exception):
    """A request we answer with a 4xx/5xx and a message that says what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Layers:
    """Time spent per layer during one request, for Server-Timing and metrics."""

    def __init__(self):
        self.seconds = {"cache": 0.0, "db": 0.0, "queue": 0.0}
        self.read_source: str | None = None      # which server answered a read

    @asynccontextmanager
    async def timed(self, layer: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[layer] += time.perf_counter() - start


class Replica:
    """Everything one replica holds: config, pools, cache client, limiter, counters."""

    def __init__(self, name: str, config_path: str):
        self.name, self.config_path = name, config_path
        self.config = AppConfig.load(config_path)
        self.metrics = Metrics(replica=name)
        self.limiter = ResizableLimiter(self.config.concurrency)
        self.cache = aioredis.from_url(self.config.redis_url, socket_timeout=0.5,
                                       socket_connect_timeout=0.5, decode_responses=True)
        self.pools = self._make_pools(self.config)
        self.breakers = {"replica": failover.Breaker("postgres-replica"),
                         "primary": failover.Breaker("postgres-primary")}
        self.watches = [
            failover.ServerWatch("postgres-replica", lambda: self.config.replica_dsn, self.breakers["replica"],
                                 lag_bound_of=lambda: self.config.replica_lag_bound_s,
                                 on_recover=lambda: self.pools["read"].check()),
            failover.ServerWatch("postgres-primary", lambda: self.config.primary_dsn, self.breakers["primary"],
                                 on_recover=lambda: self.pools["primary-read"].check())]
        self._watch_tasks: list[asyncio.Task] = []

    def _make_pools(self, c: AppConfig) -> dict[str, AsyncConnectionPool]:
        # prepare_threshold=None: PgBouncer in transaction mode cannot keep prepared statements.
        common = {"kwargs": {"autocommit": True, "prepare_threshold": None, "connect_timeout": 2},
                  "min_size": 0, "timeout": c.pool_timeout_s, "max_idle": c.pool_idle_s, "open": False}
        # Writes and fail-over reads check a pooled connection before use (one round trip): after
        # a restart of PgBouncer or the primary, a broken one is replaced, never sent a statement.
        checked = {**common, "check": AsyncConnectionPool.check_connection}
        return {"write": AsyncConnectionPool(c.write_dsn, max_size=c.write_pool, name="write", **checked),
                "read": AsyncConnectionPool(c.replica_dsn, max_size=c.read_pool, name="read", **common),
                "primary-read": AsyncConnectionPool(c.primary_dsn, max_size=c.read_pool,
                                                    name="primary-read", **checked)}

    async def open(self):
        for pool in self.pools.values():
            await pool.open(wait=False)
        self._watch_tasks = [asyncio.create_task(watch.run()) for watch in self.watches]

    async def close(self):
        for task in self._watch_tasks:
            task.cancel()
        for pool in self.pools.values():
            await pool.close(timeout=1)
        await self.cache.aclose()

    async def reload(self):
        """Apply a new config file without a restart: TTL, pool sizes, concurrency."""
        new = AppConfig.load(self.config_path)
        old, self.config = self.config, new
        if (new.write_dsn, new.replica_dsn, new.primary_dsn) != (old.write_dsn, old.replica_dsn, old.primary_dsn):
            # A new path to the database (PgBouncer switched on or off): fresh pools, old ones drained.
            old_pools, self.pools = self.pools, self._make_pools(new)
            for pool in self.pools.values():    # not self.open(): that would start a second set of probes
                await pool.open(wait=False)
            for pool in old_pools.values():
                await pool.close(timeout=5)
        elif new.write_pool < old.write_pool or new.read_pool < old.read_pool:
            # A smaller pool: psycopg_pool's resize() keeps the connections already open (it drops
            # one per idle period), so the servers would keep the old count for minutes. Fresh pools
            # instead; the old ones close their idle connections now and the busy ones on return.
            old_pools, self.pools = self.pools, self._make_pools(new)
            for pool in self.pools.values():
                await pool.open(wait=False)
            for pool in old_pools.values():
                await pool.close(timeout=5)
        elif (new.write_pool, new.read_pool) != (old.write_pool, old.read_pool):
            await self.pools["write"].resize(0, new.write_pool)
            await self.pools["read"].resize(0, new.read_pool)
            await self.pools["primary-read"].resize(0, new.read_pool)
        for pool in self.pools.values():
            pool.timeout, pool.max_idle = new.pool_timeout_s, new.pool_idle_s
        if new.concurrency != old.concurrency:
            await self.limiter.resize(new.concurrency)

    @asynccontextmanager
    async def connection(self, pool_name: str, layers: Layers):
        pool = self.pools[pool_name]
        async with layers.timed("db"):
            try:
                async with pool.connection() as conn:
                    conn.row_factory = dict_row
                    self.metrics.db_queries += 1
                    yield conn
            except PoolTimeout:
                raise HTTPProblem(503, f"{pool_name} pool exhausted: all {pool.max_size} connections "
                                       f"busy for {pool.timeout:g} s") from None
            except psycopg.OperationalError as exc:
                raise HTTPProblem(503, f"database unavailable through the {pool_name} pool "
                                       f"({self.server_behind(pool_name)}): "
                                       f"{str(exc).strip().splitlines()[0]}") from None

    def server_behind(self, pool_name: str) -> str:
        c = self.config
        if pool_name == "read":
            return f"postgres-replica at {failover.address(c.replica_dsn)}"
        via = f" via pgbouncer at {failover.address(c.write_dsn)}" if pool_name == "write" and c.via_pgbouncer else ""
        return f"postgres-primary at {failover.address(c.primary_dsn)}{via}"

    def primary_down(self) -> HTTPProblem:
        breaker = self.breakers["primary"]
        return HTTPProblem(503, f"postgres-primary at {failover.address(self.config.primary_dsn)} is down "
                                f"({breaker.reason}): writes are refused until it is back; retry shortly")

    async def read(self, layers: Layers, query: str, params: tuple):
        """One row, from the replica while its breaker is closed, else (or if it fails) the primary."""
        async def fetch(pool_name: str):
            async with self.connection(pool_name, layers) as conn:
                return await (await conn.execute(query, params)).fetchone()

        breaker = self.breakers["replica"]
        if self.config.read_from == "replica" and not breaker.open:
            finished, result = await failover.within(fetch("read"), REPLICA_READ_TIMEOUT_S)
            if finished and not isinstance(result, BaseException):
                layers.read_source = "replica"
                return result
            breaker.trip(f"a read failed: {result.message if isinstance(result, HTTPProblem) else result}"
                         if finished else f"a read got no answer within {REPLICA_READ_TIMEOUT_S:g} s")
            self.metrics.read_failovers += 1
        if self.breakers["primary"].open:
            raise HTTPProblem(503, f"no database can serve reads: postgres-replica is down "
                                   f"({breaker.reason or 'read_from=primary'}) and postgres-primary is down "
                                   f"({self.breakers['primary'].reason})")
        row = await fetch("primary-read")
        layers.read_source = "primary"
        return row

    async def write(self, layers: Layers, query: str, params: tuple):
        """One statement on the primary: refused at once while it is down."""
        if self.breakers["primary"].open and not await self.watches[1].recheck():
            raise self.primary_down()

        async def run():
            async with self.connection("write", layers) as conn:
                return await (await conn.execute(query, params)).fetchone()

        finished, result = await failover.within(run(), WRITE_TIMEOUT_S)
        if not finished:
            self.breakers["primary"].trip(f"a write got no answer within {WRITE_TIMEOUT_S:g} s")
            raise self.primary_down()
        if isinstance(result, BaseException):
            raise result
        return result

    def failover_stats(self) -> dict:
        stats = {name: b.to_dict() for name, b in self.breakers.items()}
        stats["replica"]["lag_s"] = round(self.watches[0].lag_s, 3)
        stats["replica"]["lag_bound_s"] = self.config.replica_lag_bound_s
        return stats

    def pool_stats(self) -> dict:
        stats = {}
        for name, pool in self.pools.items():
            s = pool.get_stats()
            stats[name] = {"max_size": pool.max_size, "size": s.get("pool_size", 0),
                           "idle": s.get("pool_available", 0), "waiting": s.get("requests_waiting", 0),
                           "timeouts": s.get("requests_errors", 0)}
        return stats


REPLICA_READ_TIMEOUT_S = 0.5    # a read the replica has not answered by then goes to the primary
WRITE_TIMEOUT_S = 3.0           # a write the primary has not answered by then gets a 503


# -- request plumbing ----------------------------------------------------------

# Routes the course's own probes call on each replica directly: their connections are not traffic.
UNCOUNTED_CONNECTIONS = ("metrics", "health", "admin_config")


def endpoint(route_name: str):
    """Counts the request, times it, and turns HTTPProblem into a clear JSON error."""
    def wrap(handler):
        @functools.wraps(handler)
        async def run(request: Request):
            replica: Replica = request.app.state.replica
            m = replica.metrics
            m.requests += 1
            m.in_flight += 1
            m.by_route[route_name] += 1
            if route_name not in UNCOUNTED_CONNECTIONS:
                m.connections.saw(request.scope.get(CONNECTION_KEY))
            layers = Layers()
            start = time.perf_counter()
            try:
                status, body = await handler(request, replica, layers)
            except HTTPProblem as problem:
                status, body = problem.status, {"error": problem.message}
            except Exception as exc:  # noqa: BLE001 - the replica must answer, and count it
                status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                m.in_flight -= 1
            total = time.perf_counter() - start
            if status >= 500:
                m.errors += 1
            elif status >= 400:
                m.client_errors += 1
            for layer, seconds in layers.seconds.items():
                m.layer_seconds[layer] += seconds
            app_seconds = max(0.0, total - sum(layers.seconds.values()))
            m.layer_seconds["app"] += app_seconds
            timing = ", ".join(f"{layer};dur={seconds * 1000:.3f}" for layer, seconds
                               in [*layers.seconds.items(), ("app", app_seconds), ("total", total)])
            headers = {"X-Replica": replica.name, "Server-Timing": timing}
            if layers.read_source:
                m.read_sources[layers.read_source] += 1
                headers["X-Read-Source"] = layers.read_source
                headers["Server-Timing"] += f', read;desc="{layers.read_source}"'
            return JSONResponse(body, status_code=status, headers=headers)
        return run
    return wrap


def _user_id(request: Request) -> int:
    raw = request.path_params["user_id"]
    try:
        value = int(raw)
    except ValueError:
        raise HTTPProblem(400, f"user id must be an integer, got {raw!r}") from None
    if not 1 <= value <= 2**31 - 1:
        raise HTTPProblem(400, f"user id must be from 1 to {2**31 - 1}, got {value}")
    return value


async def _json_fields(request: Request, required: bool) -> dict:
    try:
        data = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, f"body must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, f"body must be a JSON object with {', '.join(WRITABLE_FIELDS)}")
    unknown = set(data) - set(WRITABLE_FIELDS)
    if unknown:
        raise HTTPProblem(400, f"unknown field {sorted(unknown)[0]!r}: allowed {', '.join(WRITABLE_FIELDS)}")
    for name, kind in WRITABLE_FIELDS.items():
        if name in data and (not isinstance(data[name], kind) or not data[name].strip()):
            raise HTTPProblem(400, f"field {name!r} must be a non-empty string, got {data[name]!r}")
    if required:
        missing = [name for name in ("name", "email") if name not in data]
        if missing:
            raise HTTPProblem(400, f"missing field {missing[0]!r}")
    elif not data:
        raise HTTPProblem(400, f"nothing to change: send one of {', '.join(WRITABLE_FIELDS)}")
    return data


def _public(row: dict) -> dict:
    return {**row, "updated_at": row["updated_at"].isoformat()}


def cache_key(user_id: int) -> str:
    return f"user:{user_id}"


async def _cache_call(replica: Replica, layers: Layers, method: str, *args, **kwargs):
    """A cache operation that never fails the request: Redis down means 'miss'."""
    async with layers.timed("cache"):
        try:
            return await getattr(replica.cache, method)(*args, **kwargs)
        except (aioredis.RedisError, OSError):
            replica.metrics.cache_errors += 1
            return None


# -- routes ---------------------------------------------------------------------

@endpoint("health")
async def health(request, replica, layers):
    return 200, {"status": "ok", "replica": replica.name, "pid": os.getpid()}


@endpoint("get_user")
async def get_user(request, replica, layers):
    user_id = _user_id(request)
    ttl = replica.config.ttl_s
    if ttl > 0:
        cached = await _cache_call(replica, layers, "get", cache_key(user_id))
        if cached is not None:
            replica.metrics.cache_hits += 1
            layers.read_source = "cache"
            return 200, {**json.loads(cached), "source": "cache"}
        replica.metrics.cache_misses += 1
    # The server names itself in the same round trip: which PostgreSQL answered is the
    # database's word (pg_is_in_recovery() is true only on a standby), not the app's config.
    row = await replica.read(layers, f"SELECT {USER_COLUMNS}, pg_is_in_recovery() AS db_standby, "
                                     f"inet_server_port() AS db_port FROM users WHERE id = %s", (user_id,))
    if row is None:
        raise HTTPProblem(404, f"no user with id {user_id}")
    served_by = {"standby": row.pop("db_standby"), "port": row.pop("db_port")}
    user = _public(row)
    if ttl > 0:
        await _cache_call(replica, layers, "set", cache_key(user_id), json.dumps(user), ex=ttl)
    return 200, {**user, "source": layers.read_source, "db": served_by}


@endpoint("create_user")
async def create_user(request, replica, layers):
    data = await _json_fields(request, required=True)
    try:
        row = await replica.write(
            layers, f"INSERT INTO users (name, email, region) VALUES (%s, %s, %s) RETURNING {USER_COLUMNS}",
            (data["name"], data["email"], data.get("region", "eu")))
    except psycopg.errors.UniqueViolation:
        raise HTTPProblem(409, f"email {data['email']!r} is already taken") from None
    return 201, _public(row)


@endpoint("update_user")
async def update_user(request, replica, layers):
    user_id = _user_id(request)
    data = await _json_fields(request, required=False)
    assignments = ", ".join(f"{name} = %s" for name in data)   # names come from WRITABLE_FIELDS only
    try:
        row = await replica.write(
            layers, f"UPDATE users SET {assignments}, updated_at = now() WHERE id = %s RETURNING {USER_COLUMNS}",
            (*data.values(), user_id))
    except psycopg.errors.UniqueViolation:
        raise HTTPProblem(409, f"email {data['email']!r} is already taken") from None
    if row is None:
        raise HTTPProblem(404, f"no user with id {user_id}")
    # Invalidate after the commit, so the next read fetches the new row.
    await _cache_call(replica, layers, "delete", cache_key(user_id))
    return 200, _public(row)


@endpoint("work")
async def work(request, replica, layers):
    """Simulated work with an explicit cost: `ms` of I/O wait (kind=io), of CPU (kind=cpu),
    or of a query holding a read-pool connection (kind=db), or a write-pool one on the primary
    (kind=db_write: through PgBouncer when it is enabled).

    At most `concurrency` requests work at once per replica; the rest queue,
    and the queue time shows in Server-Timing as `queue`.
    """
    kind = request.query_params.get("kind", "io")
    if kind not in WORK_KINDS:
        raise HTTPProblem(400, f"kind must be one of {', '.join(map(repr, WORK_KINDS))}, got {kind!r}")
    raw = request.query_params.get("ms", "20")
    try:
        ms = float(raw)
    except ValueError:
        raise HTTPProblem(400, f"ms must be a number, got {raw!r}") from None
    if not 0 <= ms <= MAX_WORK_MS:
        raise HTTPProblem(400, f"ms must be from 0 to {MAX_WORK_MS}, got {ms:g}")
    queued = time.perf_counter()
    async with replica.limiter:
        layers.seconds["queue"] += time.perf_counter() - queued
        if kind == "io":
            await asyncio.sleep(ms / 1000)
        elif kind == "db":
            # A slow query: the wait happens in PostgreSQL and holds a pooled connection meanwhile.
            pool = "primary-read" if replica.breakers["replica"].open else "read"
            async with replica.connection(pool, layers) as conn:
                await conn.execute("SELECT pg_sleep(%s)", (ms / 1000,))
        elif kind == "db_write":
            async with replica.connection("write", layers) as conn:
                await conn.execute("SELECT pg_sleep(%s)", (ms / 1000,))
        else:
            # Burn `ms` of CPU time (not wall time: under a CPU quota the wall time stretches).
            # It blocks this replica's event loop: that is the CPU-bound model.
            deadline = time.thread_time() + ms / 1000
            while time.thread_time() < deadline:
                pass
    return 200, {"kind": kind, "ms": ms, "replica": replica.name}


@endpoint("metrics")
async def metrics(request, replica, layers):
    limiter = replica.limiter
    return 200, replica.metrics.to_dict(
        pools=replica.pool_stats(), failover=replica.failover_stats(), process=process_stats(),
        work={"concurrency": limiter.capacity, "busy": limiter.in_use, "queued": limiter.waiting})


@endpoint("admin_config")
async def admin_config(request, replica, layers):
    given = request.headers.get("X-Admin-Token", "")
    # Constant time: how long a wrong token takes must not tell how much of it was right.
    if not hmac.compare_digest(given.encode(), replica.config.admin_token.encode()):
        raise HTTPProblem(403, "missing or wrong X-Admin-Token")
    await replica.reload()
    c = replica.config
    # Everything stack.plan.app_config_expect checks: the push is done when these are in force.
    return 200, {"replica": replica.name, "ttl_s": c.ttl_s, "write_pool": c.write_pool,
                 "read_pool": c.read_pool, "concurrency": c.concurrency, "read_from": c.read_from,
                 "pool_timeout_s": c.pool_timeout_s, "pool_idle_s": c.pool_idle_s,
                 "via_pgbouncer": c.via_pgbouncer, "replica_lag_bound_s": c.replica_lag_bound_s}


def create_app() -> Starlette:
    replica = Replica(os.environ.get("SCALELAB_REPLICA", "app"), os.environ["SCALELAB_APP_CONFIG"])

    @asynccontextmanager
    async def lifespan(app):
        await replica.open()
        yield
        await replica.close()

    app = Starlette(lifespan=lifespan, routes=[
        Route("/health", health),
        Route("/users/{user_id}", get_user, methods=["GET"]),
        Route("/users/{user_id}", update_user, methods=["PUT"]),
        Route("/users", create_user, methods=["POST"]),
        Route("/work", work),
        Route("/metrics", metrics),
        Route("/_admin/config", admin_config, methods=["POST"]),
    ])
    app.state.replica = replica
    return app
