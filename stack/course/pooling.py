"""Lesson 5's experiments: what a database connection costs, pools, exhaustion, PgBouncer.

Connections are counted by the servers (`pg_stat_activity`, PgBouncer's SHOW POOLS),
latency by the client that waited. Each function returns a pandas DataFrame.
"""
from __future__ import annotations

import asyncio
import math
import random
import threading
import time

import pandas as pd
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from .. import clients
from ..load import LoadSpec, run_load
from .poller import Poller
from .predictions import experiment


def little_pool_size(rate_rps: float, query_ms: float) -> float:
    """Connections busy on average (Little's law): arrival rate x time each holds one (pure)."""
    return rate_rps * query_ms / 1000


BACKENDS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND datname = 'scalelab'")
# Only the backends serving clients that named themselves so (libpq's application_name;
# PgBouncer passes it on to the server connection it lends).
TAGGED_SQL = BACKENDS_SQL + " AND application_name = %s"


def backends(stack, server: str = "primary") -> int:
    """Client backends of the app database, as the server counts them."""
    with clients.connect(stack, server, user="postgres", dbname="postgres") as conn:
        return conn.execute(BACKENDS_SQL).fetchone()[0]


class PeakBackends(Poller):
    """Samples a server's client backends every `every_s` in a thread; .peak is the running maximum
    (read it at any time; after stop() it covers the whole run).
    With `application_name`, only the backends of clients that gave that name."""

    def __init__(self, stack, server: str, every_s: float = 0.1, application_name: str | None = None):
        super().__init__(every_s)
        self.stack, self.server, self.application_name = stack, server, application_name
        self.peak, self.readings = 0, []

    def opened(self):
        return clients.connect(self.stack, self.server, user="postgres", dbname="postgres")

    def poll(self, conn):
        if self.application_name is None:
            n = conn.execute(BACKENDS_SQL).fetchone()[0]
        else:
            n = conn.execute(TAGGED_SQL, (self.application_name,)).fetchone()[0]
        self.readings.append((time.time(), n))
        self.peak = max(self.peak, n)


# -- 1. what a connection costs ----------------------------------------------------------

QUERY = "SELECT name FROM users WHERE id = %s"


def _closed_loop(worker, threads: int, seconds: float) -> dict:
    latencies, errors = [], []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(n):
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            started = time.perf_counter()
            try:
                worker(1 + (n * 7919 + i) % 10_000)
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
            except psycopg.Error as exc:
                with lock:
                    errors.append(str(exc).strip().splitlines()[0])

    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    s = pd.Series(latencies, dtype=float)
    return {"queries_per_s": len(latencies) / elapsed, "p50_ms": s.quantile(0.5), "p99_ms": s.quantile(0.99),
            "errors": len(errors), "error_example": errors[0] if errors else ""}


@experiment
def connection_costs(stack, threads: int = 8, seconds: float = 2.0, pool_size: int = 4, progress=None) -> pd.DataFrame:
    """The same one-row query three ways, `threads` clients in a closed loop:
    a new connection to PostgreSQL per query (SCRAM login + a new server process each time),
    a psycopg_pool of `pool_size` kept connections, and a new connection per query to PgBouncer
    (transaction mode), which hands out connections it keeps open to PostgreSQL."""
    # Each way's connections carry a name of their own, and the primary counts the backends that
    # serve that name: not a difference from a count taken before, which the app's own connections
    # (opened, or closed when idle) and the last way's exiting processes would blur.
    def dsn(server: str, way: str) -> str:
        return make_conninfo(clients.dsn(stack, server, user="app"), application_name=f"scalelab-costs-{way}")

    def per_query(dsn, **kw):
        def work(user_id):
            with psycopg.connect(dsn, autocommit=True, **kw) as conn:
                conn.execute(QUERY, (user_id,)).fetchone()
        return work

    rows = []
    pool = ConnectionPool(dsn("primary", "pool"), min_size=pool_size, max_size=pool_size,
                          kwargs={"autocommit": True}, open=True)
    pool.wait()
    try:
        def pooled(user_id):
            with pool.connection() as conn:
                conn.execute(QUERY, (user_id,)).fetchone()
        ways = {"new connection per query": ("new", per_query(dsn("primary", "new"))),
                f"psycopg_pool ({pool_size} connections)": ("pool", pooled),
                "new connection to PgBouncer per query": ("bouncer", per_query(dsn("pgbouncer", "bouncer"),
                                                                               prepare_threshold=None))}
        for label, (way, worker) in ways.items():
            with PeakBackends(stack, "primary", every_s=0.05, application_name=f"scalelab-costs-{way}") as peak:
                measured = _closed_loop(worker, threads, seconds)
            rows.append({"way": label, **measured, "server_backends": peak.peak})
            if progress:
                progress(f"{label}: {measured['queries_per_s']:.0f} queries/s, p50 {measured['p50_ms']:.2f} ms, "
                         f"{peak.peak} server backends at most")
    finally:
        pool.close()
    return pd.DataFrame(rows).set_index("way")


# -- 2. exhaustion ------------------------------------------------------------------------

DB_WORK = "/work?kind=db&ms={ms}"


@experiment
def exhaustion(stack, replicas: int = 8, read_pools=(40,), connections: int = 300, query_ms: int = 500,
               seconds: float = 4.0, progress=None) -> pd.DataFrame:
    """`connections` clients hold a read-pool connection each for `query_ms` (a slow query), across
    `replicas` app replicas, for each read pool size; the replica's backends counted by the replica,
    errors as the app answered them."""
    rows = []
    for size in read_pools:
        stack.apply(replicas=replicas, concurrency=64, read_pool=size)
        with PeakBackends(stack, "replica") as peak:
            result = run_load(LoadSpec(url=stack.status()["url"], mode="closed", connections=connections,
                                       duration_s=seconds, path=DB_WORK.format(ms=query_ms), timeout_s=10))
        example = next(iter(result.error_examples.values()), "")
        rows.append({"read_pool": size, "pools_max": replicas * size, "served_rps": result.throughput_rps,
                     "errors": result.error_count, "peak_replica_backends": peak.peak,
                     "p99_ms": result.latency_ms()["p99_ms"], "error_example": example,
                     **refused_connection(stack, "replica")})
        if progress:
            progress(f"read pool {size} x {replicas} replicas = {replicas * size}: {result.throughput_rps:.0f} req/s, "
                     f"{result.error_count} errors, {peak.peak} backends on the replica")
    return pd.DataFrame(rows).set_index("read_pool")


async def _bouncer_clients(dsn: str, clients_n: int, seconds: float, query_ms: int,
                           connecting_at_once: int = 16) -> int:
    """`clients_n` connections to PgBouncer, opened `connecting_at_once` at a time (each one is a
    SCRAM login that PgBouncer, one process, checks on its own CPU: 200 at once overrun the 2 s
    connect timeout on 2 busy cores), then all querying together for `seconds`."""
    done = 0
    gate = asyncio.Semaphore(connecting_at_once)
    conns = []

    async def connect():
        async with gate:
            conns.append(await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None,
                                                               connect_timeout=10))

    async def one(conn, deadline):
        nonlocal done
        while time.monotonic() < deadline:
            await conn.execute("SELECT pg_sleep(%s)", (query_ms / 1000,))
            done += 1

    try:
        await asyncio.gather(*(connect() for _ in range(clients_n)))
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one(conn, deadline) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    return done


@experiment
def pgbouncer_sharing(stack, clients_n: int = 200, seconds: float = 3.0, query_ms: int = 20) -> pd.DataFrame:
    """`clients_n` client connections to PgBouncer, each running short queries; every 0.1 s, SHOW POOLS
    (client and server connections) and the primary's own count of backends (attrs: its count
    before the clients connected, the queries run, SHOW STATS over the run)."""
    dsn = clients.dsn(stack, "pgbouncer", user="app")
    readings = []
    began = time.time()

    def watch():
        rows = [r for r in clients.pgbouncer_admin(stack, "SHOW POOLS") if r.get("database") == "scalelab"]
        pools = {k: sum(int(r.get(k) or 0) for r in rows) for k in ("cl_active", "cl_waiting", "sv_active",
                                                                  "sv_idle")}
        readings.append({"t": time.time() - began, **pools, "primary_backends": backends(stack, "primary")})

    stats_before = bouncer_stats(stack)
    # What the primary held before any client came (health probes, PgBouncer's idle server
    # connections, pools' idle connections left by earlier experiments): the clients' cost is what
    # they add to it.
    before = backends(stack, "primary")
    with Poller(0.1, watch):
        queries = asyncio.run(_bouncer_clients(dsn, clients_n, seconds, query_ms)) if not _in_loop() else \
            _run_in_thread(lambda: asyncio.run(_bouncer_clients(dsn, clients_n, seconds, query_ms)))
    frame = pd.DataFrame(readings).set_index("t")
    frame.attrs["queries"] = queries
    frame.attrs["primary_backends_before"] = before
    frame.attrs["stats"] = stats_delta(stats_before, bouncer_stats(stack))
    return frame


def bouncer_stats(stack) -> dict:
    """PgBouncer's SHOW STATS totals for the app database (transactions; microseconds)."""
    rows = [r for r in clients.pgbouncer_admin(stack, "SHOW STATS") if r.get("database") == "scalelab"]
    keys = ("total_xact_count", "total_xact_time", "total_wait_time")
    return {k: int(rows[0].get(k) or 0) if rows else 0 for k in keys}


def stats_delta(before: dict, after: dict) -> dict:
    """What PgBouncer counted between two SHOW STATS readings: transactions, and per transaction the
    milliseconds clients waited for a server connection and the milliseconds PgBouncer timed for it
    (`xact_ms`: measured here, PgBouncer 1.18 counts the wait in it too), so `server_ms` is the
    difference: the time a server connection was really held (pure)."""
    xacts = after["total_xact_count"] - before["total_xact_count"]
    per = (lambda key: (after[key] - before[key]) / xacts / 1000 if xacts else 0.0)
    xact, wait = per("total_xact_time"), per("total_wait_time")
    return {"transactions": xacts, "xact_ms": xact, "wait_ms": wait, "server_ms": max(0.0, xact - wait)}


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _run_in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()))
    t.start()
    t.join()
    return out["v"]


# -- 3. pool sizing -------------------------------------------------------------------------

@experiment
def pool_sweep(stack, sizes=(2, 4, 8, 16, 32), rate: float = 200, query_ms: int = 50, replicas: int = 2,
               seconds: float = 3.0, concurrency: int = 1024, progress=None) -> pd.DataFrame:
    """Open loop at `rate` req/s of a `query_ms` query holding a read-pool connection, across `replicas`;
    for each read pool size: served rate, p99, 503s (pool timeouts) and the replica's backends.
    `concurrency` (work slots per replica) is high so that the pool is the only queue: with fewer
    slots, requests wait for a slot first, and the pool's 2 s timeout is never reached."""
    rows = []
    for size in sizes:
        stack.apply(replicas=replicas, concurrency=concurrency, read_pool=size)
        with PeakBackends(stack, "replica") as peak:
            result = run_load(LoadSpec(url=stack.status()["url"], mode="open", rate=rate, connections=512,
                                       duration_s=seconds, path=DB_WORK.format(ms=query_ms), timeout_s=10,
                                       max_send_lag_ms=10))
        rows.append({"read_pool": size, "little_per_replica": little_pool_size(rate / replicas, query_ms),
                     "served_rps": result.responses / result.elapsed_s, "ok_rps": result.ok / result.elapsed_s,
                     "errors": result.error_count, "p50_ms": result.latency_ms()["p50_ms"],
                     "p99_ms": result.latency_ms()["p99_ms"], "peak_replica_backends": peak.peak,
                     "error_example": next(iter(result.error_examples.values()), "")})
        if progress:
            progress(f"read pool {size}: {rows[-1]['ok_rps']:.0f} ok/s, p99 {rows[-1]['p99_ms']:.0f} ms, "
                     f"{result.error_count} errors, {peak.peak} backends")
    return pd.DataFrame(rows).set_index("read_pool")


# -- 4. what transaction pooling breaks -------------------------------------------------------

def session_state_through(stack, mode: str) -> pd.DataFrame:
    """Client A sets session state through PgBouncer, client B opens a transaction, A uses the state.
    In transaction mode B holds the server connection A used, so A lands on another one."""
    stack.apply(**{"pgbouncer.mode": mode})
    dsn = clients.dsn(stack, "pgbouncer", user="app")
    rows = []
    # A fresh key each time, tried not waited for: a lock leaked in transaction mode stays held by some
    # server connection until PgBouncer closes it, and a blocking pg_advisory_lock would wait for that.
    key = random.randrange(1, 2**31)
    tests = {
        "SET, then SHOW": ("SET statement_timeout = '1234ms'", "SHOW statement_timeout",
                           lambda row: row[0] == "1234ms"),
        "PREPARE, then EXECUTE": ("PREPARE by_id AS SELECT name FROM users WHERE id = $1", "EXECUTE by_id(1)",
                                  lambda row: row is not None and isinstance(row[0], str)),
        "advisory lock, then unlock": (f"SELECT pg_try_advisory_lock({key})", f"SELECT pg_advisory_unlock({key})",
                                       lambda row: row[0] is True),
        "same server process": ("SELECT pg_backend_pid()", "SELECT pg_backend_pid()", None),
    }
    for label, (first, second, ok) in tests.items():
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a, \
                psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as b:
            cur = a.execute(first)
            first_row = cur.fetchone() if cur.description else None
            b.execute("BEGIN")
            b.execute("SELECT 1")
            try:
                row = a.execute(second).fetchone()
                works = ok(row) if ok else row[0] == first_row[0]
                said = str(row[0])
            except psycopg.Error as exc:
                works, said = False, str(exc).strip().splitlines()[0]
            b.execute("COMMIT")
        rows.append({"mode": mode, "test": label, "works": works, "server_said": said})
    return pd.DataFrame(rows)


@experiment
def transaction_mode_breaks(stack) -> pd.DataFrame:
    """Session state through PgBouncer in session mode and in transaction mode, side by side;
    plus psycopg's automatic prepared statements in transaction mode."""
    frames = [session_state_through(stack, "session"), session_state_through(stack, "transaction")]
    with psycopg.connect(clients.dsn(stack, "pgbouncer", user="app"), autocommit=True, prepare_threshold=0) as a, \
            psycopg.connect(clients.dsn(stack, "pgbouncer", user="app"), autocommit=True, prepare_threshold=None) as b:
        a.execute(QUERY, (1,)).fetchone()
        b.execute("BEGIN")
        b.execute("SELECT 1")
        try:
            a.execute(QUERY, (2,)).fetchone()
            works, said = True, "ok"
        except psycopg.Error as exc:
            works, said = False, str(exc).strip().splitlines()[0]
        b.execute("COMMIT")
    frames.append(pd.DataFrame([{"mode": "transaction", "test": "psycopg prepare_threshold=0", "works": works,
                                 "server_said": said}]))
    return pd.concat(frames, ignore_index=True).set_index(["test", "mode"]).sort_index()


def refused_connection(stack, server: str = "replica", limit: int = 400) -> dict:
    """Open connections as the app's user until the server refuses one: how many it took, and the
    error text a pool meets at that point. Every connection is closed afterwards."""
    opened, error = [], ""
    try:
        for _ in range(limit):
            try:
                opened.append(clients.connect(stack, server, user="app"))
            except psycopg.OperationalError as exc:
                error = str(exc).strip().splitlines()[-1]
                break
    finally:
        for conn in opened:
            conn.close()
    return {"opened_before_refusal": len(opened), "error": error}


def pools_needed(rate_rps: float, query_ms: float, replicas: int) -> int:
    """Connections per replica by Little's law, rounded up (pure)."""
    return math.ceil(little_pool_size(rate_rps / replicas, query_ms))
