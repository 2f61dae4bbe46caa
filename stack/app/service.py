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
import collections
import functools
import hmac
import json
import os
import time
from contextlib import asynccontextmanager

import psycopg
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import failover
from .cache_watch import UNREACHABLE, CacheWatch
from ..shardmap import REGIONS, ShardMap
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
        self.shard: str | None = None            # "shard-3", or "all(4)" for a fan-out
        self.per_shard: dict[str, float] = {}    # seconds each shard took (a fan-out asks several)

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
        # No retries inside the client: a failed call is a miss, and it opens the cache's breaker.
        self.cache = aioredis.from_url(self.config.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                       decode_responses=True, retry=Retry(NoBackoff(), 0))
        self.cache_watch = CacheWatch(lambda: self.config.redis_url)
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
        self.shard_pools: dict[str, AsyncConnectionPool] = {}
        self.read_map: ShardMap | None = None
        self.write_maps: list[ShardMap] = []
        # Writes in flight per routing epoch: a new routing is in force once the old one's are done.
        self.routing_epoch = 0
        self.writes_in_flight: collections.Counter = collections.Counter()
        self._routing_from(self.config)

    @asynccontextmanager
    async def write_routing(self):
        """The write maps for one write, held until it is done (see reload)."""
        epoch = self.routing_epoch
        self.writes_in_flight[epoch] += 1
        try:
            yield list(self.write_maps)
        finally:
            self.writes_in_flight[epoch] -= 1

    def _routing_from(self, c: AppConfig) -> list[AsyncConnectionPool]:
        """Shard maps and one pool per shard server from the config; returns pools no longer used."""
        shards = c.shards or {}
        self.read_map = ShardMap.from_dict(shards.get("read"))
        self.write_maps = [ShardMap.from_dict(m) for m in shards.get("write", [])]
        dsns = shards.get("dsns", {})
        gone = [self.shard_pools.pop(k) for k in list(self.shard_pools)
                if dsns.get(k) != self.shard_pools[k].conninfo]
        for key, dsn in dsns.items():
            if key not in self.shard_pools:
                self.shard_pools[key] = AsyncConnectionPool(
                    dsn, min_size=0, max_size=SHARD_POOL, timeout=c.pool_timeout_s, max_idle=c.pool_idle_s,
                    name=f"shard-{key}", open=False, check=AsyncConnectionPool.check_connection,
                    kwargs={"autocommit": True, "prepare_threshold": None, "connect_timeout": 2})
        return gone

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
        for pool in [*self.pools.values(), *self.shard_pools.values()]:
            await pool.open(wait=False)
        self._watch_tasks = [asyncio.create_task(watch.run()) for watch in [*self.watches, self.cache_watch]]

    async def close(self):
        for task in self._watch_tasks:
            task.cancel()
        for pool in [*self.pools.values(), *self.shard_pools.values()]:
            await pool.close(timeout=1)
        await self.cache.aclose()
        self.cache_watch.close()

    async def reload(self):
        """Apply a new config file without a restart: TTL, pool sizes, concurrency."""
        new = AppConfig.load(self.config_path)
        old, self.config = self.config, new
        old_epoch = self.routing_epoch
        gone = self._routing_from(new)
        if new.shards != old.shards:
            # The replica reports the new routing only when no write that began under the old one is
            # still running: a mover that starts after this push never races a write it cannot see.
            self.routing_epoch += 1
            deadline = time.monotonic() + 10
            while self.writes_in_flight[old_epoch] > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
        for pool in gone:
            await pool.close(timeout=5)
        for pool in self.shard_pools.values():
            if pool.closed:
                await pool.open(wait=False)
        if (new.write_dsn, new.replica_dsn, new.primary_dsn) != (old.write_dsn, old.replica_dsn, old.primary_dsn):
            # A new path to the database (PgBouncer switched on or off): fresh pools, old ones drained.
            old_pools, self.pools = self.pools, self._make_pools(new)
            for pool in self.pools.values():    # not self.open(): that would start a second set of probes
                await pool.open(wait=False)
            for pool in old_pools.values():
                await pool.close(timeout=5)
        elif new.write_pool < old.write_pool or new.read_pool < old.read_pool:
            # psycopg_pool's resize() never closes the connections a pool already holds (the servers
            # would keep the old count for minutes), so a smaller pool is a fresh one: new requests
            # use it at once; the old ones close their idle connections now and the busy ones as they
            # come back (at most 5 s), so the servers see the new size by the time the push returns.
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
    async def _pooled(self, pool: AsyncConnectionPool, name: str, server):
        """A connection from `pool`; exhaustion or a dead server becomes a 503 naming `server()`."""
        try:
            async with pool.connection() as conn:
                conn.row_factory = dict_row
                self.metrics.db_queries += 1
                yield conn
        except PoolTimeout:
            raise HTTPProblem(503, f"{name} pool exhausted: all {pool.max_size} connections "
                                   f"busy for {pool.timeout:g} s") from None
        except psycopg.OperationalError as exc:
            raise HTTPProblem(503, f"database unavailable through the {name} pool ({server()}): "
                                   f"{str(exc).strip().splitlines()[0]}") from None

    @asynccontextmanager
    async def connection(self, pool_name: str, layers: Layers):
        async with layers.timed("db"):
            async with self._pooled(self.pools[pool_name], pool_name, lambda: self.server_behind(pool_name)) as conn:
                yield conn

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

    # -- users on shard servers ---------------------------------------------------
    @asynccontextmanager
    async def shard_connection(self, shard: int):
        pool = self.shard_pools.get(str(shard))
        if pool is None:
            raise HTTPProblem(503, f"no connection to shard {shard}: the replica's config names shards "
                                   f"{', '.join(sorted(self.shard_pools)) or 'none'}")
        async with self._pooled(pool, f"shard-{shard}",
                                lambda: f"postgres-shard-{shard} at {failover.address(pool.conninfo)}") as conn:
            yield conn

    async def on_shard(self, layers: Layers, shard: int, query: str, params: tuple, fetch: str = "one"):
        """One statement on one shard server, timed as db and per shard."""
        self.metrics.by_shard[f"shard-{shard}"] += 1
        start = time.perf_counter()
        try:
            async with self.shard_connection(shard) as conn:
                cur = await conn.execute(query, params)
                if fetch == "none":
                    return None
                return await (cur.fetchone() if fetch == "one" else cur.fetchall())
        finally:
            layers.per_shard[f"shard-{shard}"] = time.perf_counter() - start

    async def on_shards(self, layers: Layers, shards: list[int], query: str, params: tuple, fetch: str = "all"):
        """Scatter-gather: the same statement on several shards at once; {shard: result}."""
        async with layers.timed("db"):
            results = await asyncio.gather(*(self.on_shard(layers, s, query, params, fetch) for s in shards))
        return dict(zip(shards, results))

    async def read(self, layers: Layers, query: str, params: tuple, fetch: str = "one"):
        """One row (or all rows), from the replica while its breaker is closed, else the primary."""
        async def fetch_rows(pool_name: str):
            async with self.connection(pool_name, layers) as conn:
                cur = await conn.execute(query, params)
                return await (cur.fetchone() if fetch == "one" else cur.fetchall())

        breaker = self.breakers["replica"]
        if self.config.read_from == "replica" and not breaker.open:
            finished, result = await failover.within(fetch_rows("read"), REPLICA_READ_TIMEOUT_S)
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
        row = await fetch_rows("primary-read")
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
        stats["redis"] = self.cache_watch.breaker.to_dict()
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


SHARD_POOL = 10                 # connections per shard server, per replica


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
            if layers.shard:
                headers["X-Shard"] = layers.shard
                headers["Server-Timing"] += f', shard;desc="{layers.shard}"' + "".join(
                    f", {name};dur={sec * 1000:.3f}" for name, sec in sorted(layers.per_shard.items()))
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
    """A cache operation that never fails the request: Redis down means 'miss' (at once while
    the cache's breaker is open: stack.app.cache_watch)."""
    async with layers.timed("cache"):
        if replica.cache_watch.breaker.open:
            replica.metrics.cache_errors += 1
            return None
        try:
            return await getattr(replica.cache, method)(*args, **kwargs)
        except UNREACHABLE as exc:
            replica.cache_watch.failed(exc)
            replica.metrics.cache_errors += 1
            return None
        except aioredis.RedisError:
            replica.metrics.cache_errors += 1
            return None


# -- routes ---------------------------------------------------------------------

@endpoint("health")
async def health(request, replica, layers):
    return 200, {"status": "ok", "replica": replica.name, "pid": os.getpid()}


# -- users on shard servers (stack.shardmap; resharding phases in stack.resharding) ---------

SHARD_UPSERT = (f"INSERT INTO users ({USER_COLUMNS}) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, "
                "region = EXCLUDED.region, updated_at = EXCLUDED.updated_at "
                "WHERE users.updated_at <= EXCLUDED.updated_at")   # the newest version wins on every copy


def _region_param(request: Request, required: bool) -> str | None:
    region = request.query_params.get("region")
    if region is None and not required:
        return None
    if region not in REGIONS:
        raise HTTPProblem(400, f"region must be one of {', '.join(map(repr, REGIONS))}, got {region!r}")
    return region


def _shard_label(shards: list[int]) -> str:
    return f"shard-{shards[0]}" if len(shards) == 1 else f"all({len(shards)})"


async def _locate(replica: Replica, layers: Layers, user_id: int, region: str | None) -> tuple[int, dict | None]:
    """(home shard, row) of a user under the read map; a directory map without the region asks every
    shard (the shard key is the region: a lookup by id alone must fan out)."""
    m = replica.read_map
    query = f"SELECT {USER_COLUMNS} FROM users WHERE id = %s"
    if m.by_region and region is None:
        found = await replica.on_shards(layers, m.shards(), query, (user_id,), fetch="one")
        layers.shard = _shard_label(m.shards())
        # Only the row on its own home counts: a copy left behind by a move is not the user.
        owned = [(s, r) for s, r in found.items() if r is not None and m.home(user_id, r["region"]) == s]
        return (owned[0] if owned else (0, None))
    home = m.home(user_id, region)
    layers.shard = f"shard-{home}"
    async with layers.timed("db"):
        return home, await replica.on_shard(layers, home, query, (user_id,))


async def _copy_to_other_maps(replica: Replica, layers: Layers, maps: list, row: dict, written: int) -> None:
    """While users move, a write lands on its home under every map writes go to (newest wins)."""
    homes = {m.home(row["id"], row["region"]) for m in maps[1:]} - {written}
    params = tuple(row[c] for c in ("id", "name", "email", "region", "updated_at"))
    async with layers.timed("db"):
        for home in sorted(homes):
            await replica.on_shard(layers, home, SHARD_UPSERT, params, fetch="none")


async def _sharded_get(request, replica, layers, user_id):
    home, row = await _locate(replica, layers, user_id, _region_param(request, required=False))
    if row is None:
        raise HTTPProblem(404, f"no user with id {user_id}")
    layers.read_source = "shard"
    return _public(row)


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
    if replica.read_map is not None:
        user = await _sharded_get(request, replica, layers, user_id)
        if ttl > 0:
            await _cache_call(replica, layers, "set", cache_key(user_id), json.dumps(user), ex=ttl)
        return 200, {**user, "source": "shard", "shard": layers.shard}
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
    if replica.read_map is not None:
        return 201, await _sharded_create(replica, layers, data)
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
    if replica.read_map is not None:
        row = await _sharded_update(request, replica, layers, user_id, data)
        await _cache_call(replica, layers, "delete", cache_key(user_id))
        return 200, row
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


async def _sharded_create(replica: Replica, layers: Layers, data: dict) -> dict:
    async with replica.write_routing() as maps:
        return await _create_on(maps, replica, layers, data)


async def _create_on(maps: list, replica: Replica, layers: Layers, data: dict) -> dict:
    region = data.get("region", "eu")
    if region not in REGIONS:
        raise HTTPProblem(400, f"region must be one of {', '.join(map(repr, REGIONS))}, got {region!r}")
    # Ids stay unique across shards: one sequence hands them out (the primary's).
    row = await replica.write(layers, "SELECT nextval(pg_get_serial_sequence('users', 'id')) AS id", ())
    user_id = row["id"]
    home = maps[0].home(user_id, region)
    layers.shard = f"shard-{home}"
    try:
        async with layers.timed("db"):
            created = await replica.on_shard(
                layers, home, f"INSERT INTO users (id, name, email, region) VALUES (%s, %s, %s, %s) "
                              f"RETURNING {USER_COLUMNS}", (user_id, data["name"], data["email"], region))
    except psycopg.errors.UniqueViolation:
        raise HTTPProblem(409, f"email {data['email']!r} is already taken on shard-{home} (a unique "
                               f"constraint holds per shard server, not across them)") from None
    await _copy_to_other_maps(replica, layers, maps, created, home)
    return _public(created)


async def _sharded_update(request, replica: Replica, layers: Layers, user_id: int, data: dict) -> dict:
    async with replica.write_routing() as maps:
        return await _update_on(maps, request, replica, layers, user_id, data)


async def _update_on(maps: list, request, replica: Replica, layers: Layers, user_id: int, data: dict) -> dict:
    m = maps[0]
    region = _region_param(request, required=False)
    if m.by_region:
        if "region" in data:
            raise HTTPProblem(409, "region is the shard key of the directory scheme: changing it would move "
                                   "the user to another shard server; create the user anew instead")
        if region is None:
            _, found = await _locate(replica, layers, user_id, None)
            if found is None:
                raise HTTPProblem(404, f"no user with id {user_id}")
            region = found["region"]
    home = m.home(user_id, region)
    layers.shard = f"shard-{home}"
    assignments = ", ".join(f"{name} = %s" for name in data)   # names come from WRITABLE_FIELDS only
    try:
        async with layers.timed("db"):
            row = await replica.on_shard(
                layers, home, f"UPDATE users SET {assignments}, updated_at = clock_timestamp() WHERE id = %s "
                              f"RETURNING {USER_COLUMNS}", (*data.values(), user_id))
    except psycopg.errors.UniqueViolation:
        raise HTTPProblem(409, f"email {data['email']!r} is already taken on shard-{home}") from None
    if row is None:
        raise HTTPProblem(404, f"no user with id {user_id}")
    await _copy_to_other_maps(replica, layers, maps, row, home)
    return _public(row)


@endpoint("list_users")
async def list_users(request, replica, layers):
    """GET /users?region=eu: the ids of a region's users. Sharded by user id, every shard holds some
    of them (scatter-gather, X-Shard: all(N)); by region (directory), one shard holds them all."""
    region = _region_param(request, required=True)
    query = "SELECT id FROM users WHERE region = %s"
    m = replica.read_map
    if m is None:
        rows = await replica.read(layers, query, (region,), fetch="all")
        ids, per_shard = sorted(r["id"] for r in rows), {}
    else:
        shards = [m.home(0, region)] if m.by_region else m.shards()
        found = await replica.on_shards(layers, shards, query, (region,))
        layers.shard = _shard_label(shards)
        # A row counts on its home only: a copy still on its old shard during a move is not a second user.
        owned = {s: [r["id"] for r in rows if m.home(r["id"], region) == s] for s, rows in found.items()}
        ids = sorted(i for part in owned.values() for i in part)
        per_shard = {f"shard-{s}": len(v) for s, v in owned.items()}
    body = {"region": region, "count": len(ids), "per_shard": per_shard, "shards_asked": len(per_shard) or 1}
    if request.query_params.get("ids", "true") != "false":
        body["ids"] = ids
    return 200, body


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
                 "via_pgbouncer": c.via_pgbouncer, "replica_lag_bound_s": c.replica_lag_bound_s,
                 "shards": {k: v for k, v in c.shards.items() if k != "dsns"} if c.shards else None}


MAX_PROFILE_S = 10.0
PROFILE_MIN_SHARE = 0.005     # frames under 0.5% of the window are left out of the answer


def profile_tree(root, total_s: float) -> list[dict]:
    """A pyinstrument frame tree as flat rows (id, parent, function, file:line, seconds, self seconds),
    pruned to frames with at least PROFILE_MIN_SHARE of the window: what an icicle chart needs."""
    rows: list[dict] = []

    def walk(frame, parent):
        if total_s and frame.time < PROFILE_MIN_SHARE * total_s and parent is not None:
            return
        index = len(rows)
        rows.append({"id": index, "parent": parent, "function": frame.function or "?",
                     "where": f"{frame.file_path_short or ''}:{frame.line_no or ''}",
                     "seconds": round(frame.time, 6), "self_seconds": round(frame.total_self_time, 6)})
        for child in frame.children:
            walk(child, index)

    if root is not None:
        walk(root, None)
    return rows


@endpoint("admin_profile")
async def admin_profile(request, replica, layers):
    """Sample this replica's event-loop thread for `seconds` (pyinstrument, every `interval_ms`):
    what its Python code did while it served whatever traffic arrived meanwhile."""
    given = request.headers.get("X-Admin-Token", "")
    if not hmac.compare_digest(given.encode(), replica.config.admin_token.encode()):
        raise HTTPProblem(403, "missing or wrong X-Admin-Token")
    try:
        seconds = float(request.query_params.get("seconds", "2"))
        interval_ms = float(request.query_params.get("interval_ms", "1"))
    except ValueError:
        raise HTTPProblem(400, "seconds and interval_ms must be numbers") from None
    if not 0.1 <= seconds <= MAX_PROFILE_S or not 0.1 <= interval_ms <= 100:
        raise HTTPProblem(400, f"seconds must be from 0.1 to {MAX_PROFILE_S:g} and interval_ms from 0.1 to 100")
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise HTTPProblem(501, "pyinstrument is not installed in this replica's environment: "
                               "pip install -r requirements.txt") from None
    # async_mode="disabled": sample the whole thread (every task), not only this request's task.
    profiler = Profiler(interval=interval_ms / 1000, async_mode="disabled")
    cpu_before, start = time.thread_time(), time.perf_counter()
    profiler.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        session = profiler.stop()
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_before
    return 200, {"replica": replica.name, "seconds": round(wall, 4), "cpu_seconds": round(cpu, 4),
                 "samples": session.sample_count, "interval_ms": interval_ms,
                 "frames": profile_tree(session.root_frame(), session.duration)}


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
        Route("/users", list_users, methods=["GET"]),
        Route("/work", work),
        Route("/metrics", metrics),
        Route("/_admin/config", admin_config, methods=["POST"]),
        Route("/_admin/profile", admin_profile, methods=["POST"]),
    ])
    app.state.replica = replica
    return app
