"""Lesson 4's experiments: read replicas, replication lag and read-your-writes, on the live pair.

Every claim is measured where it happens: which server ran a query is the
server's own answer (`pg_is_in_recovery()`, `inet_server_port()`, in the app's
"db" field or on our own connection), load per server is read from
`pg_stat_database` on each server, lag from `pg_stat_replication`.
Each function returns a pandas DataFrame; plots are in `replication_plots`.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pandas as pd

from .. import clients, fault
from ..load import LoadSpec, run_load
from ..load.mix import RequestMix
from .predictions import experiment

SERVER_ROLE = {True: "replica", False: "primary"}




# -- HTTP, one kept-alive connection per thread ------------------------------------

class Http:
    """A tiny keep-alive client for the entry point: (status, headers, body)."""

    def __init__(self, url: str, timeout: float = 5.0):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None):
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                payload = json.dumps(body).encode() if body is not None else None
                headers = {"Content-Type": "application/json"} if payload else {}
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data or b"null")
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def served_by(body) -> str | None:
    """'replica' or 'primary' from a response's "db" field (the server's own word), else None."""
    db = (body or {}).get("db") if isinstance(body, dict) else None
    return None if not db else SERVER_ROLE[bool(db["standby"])]


# -- per-server counters -------------------------------------------------------------

def server_counters(stack) -> dict:
    """{server: {t, xact_commit, tup_fetched, backends}} for the app database, asked of each server."""
    out = {}
    for server in ("primary", "replica"):
        with clients.connect(stack, server, user="postgres", dbname="postgres") as conn:
            row = conn.execute(
                "SELECT xact_commit, tup_fetched, (SELECT count(*) FROM pg_stat_activity "
                " WHERE backend_type = 'client backend' AND datname = d.datname) "
                "FROM pg_stat_database d WHERE datname = 'scalelab'").fetchone()
        out[server] = {"t": time.time(), "xact_commit": row[0], "tup_fetched": row[1], "backends": row[2]}
    return out


def rates(before: dict, after: dict) -> dict:
    """Per-second rates between two server_counters readings (pure)."""
    out = {}
    for server in after:
        dt = after[server]["t"] - before[server]["t"]
        out[server] = {"tps": (after[server]["xact_commit"] - before[server]["xact_commit"]) / dt,
                       "rows_per_s": (after[server]["tup_fetched"] - before[server]["tup_fetched"]) / dt}
    return out


# -- 1. where each query runs ---------------------------------------------------------

@experiment
def _reported_port(stack, server: str) -> int:
    with clients.connect(stack, server) as conn:
        return conn.execute("SELECT inet_server_port()").fetchone()[0]


def where_reads_run(stack, reads: int = 20, settings=("replica", "primary")) -> pd.DataFrame:
    """GET distinct users with read_from set each way; count which server answered, by its own word
    (pg_is_in_recovery() and inet_server_port() ran on the very connection that read the row)."""
    http_ = Http(stack.status()["url"])
    # Each server's port in its own words too (inet_server_port() on our own connection), as the
    # app reports it: with containers, the published port is not the one the server listens on.
    ports = {server: _reported_port(stack, server) for server in ("primary", "replica")}
    rows = []
    for setting in settings:
        stack.apply(read_from=setting)
        seen = {"replica": 0, "primary": 0}
        answered_ports = set()
        for i in range(reads):
            status, headers, body = http_.call("GET", f"/users/{100 + i}")
            if status == 200 and served_by(body):
                seen[served_by(body)] += 1
                answered_ports.add(body["db"]["port"])
        rows.append({"read_from": setting, "answered_by_replica": seen["replica"],
                     "answered_by_primary": seen["primary"], "server_ports": sorted(answered_ports),
                     "primary_port": ports["primary"], "replica_port": ports["replica"]})
    http_.close()
    stack.apply(read_from="replica")
    return pd.DataFrame(rows).set_index("read_from")


# -- 2. read scaling ------------------------------------------------------------------

@experiment
def primary_load_by_read_target(stack, read_ratio: float = 0.9, connections: int = 16, seconds: float = 3.0,
                                progress=None) -> pd.DataFrame:
    """The same read-heavy mix (GET/PUT users) with reads on the replica, then on the primary:
    each server's transactions/s and rows read/s, from its own pg_stat_database."""
    rows = []
    for setting in ("replica", "primary"):
        stack.apply(read_from=setting)
        before = server_counters(stack)
        result = run_load(LoadSpec(url=stack.status()["url"], mode="closed", connections=connections,
                                   duration_s=seconds, mix=RequestMix.users(read_ratio=read_ratio)))
        after = server_counters(stack)
        r = rates(before, after)
        rows.append({"reads_on": setting, "served_rps": result.throughput_rps, "errors": result.error_count,
                     "primary_tps": r["primary"]["tps"], "replica_tps": r["replica"]["tps"],
                     "primary_rows_per_s": r["primary"]["rows_per_s"],
                     "replica_rows_per_s": r["replica"]["rows_per_s"],
                     "p99_ms": result.latency_ms()["p99_ms"]})
        if progress:
            progress(f"reads on the {setting}: {result.throughput_rps:.0f} req/s; primary "
                     f"{r['primary']['tps']:.0f} commits/s, replica {r['replica']['tps']:.0f}")
    stack.apply(read_from="replica")
    return pd.DataFrame(rows).set_index("reads_on")


# -- 3. read-your-writes through the app ------------------------------------------------

def _write_then_read(url: str, user_id: int, poll_until_fresh_s: float) -> dict:
    """PUT a fresh name, GET it at once (stale?), then poll until the read shows it."""
    client = Http(url)
    token = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    status, _, _ = client.call("PUT", f"/users/{user_id}", {"name": token})
    written = time.perf_counter()
    if status != 200:
        client.close()
        return {"write_ok": False}
    _, _, body = client.call("GET", f"/users/{user_id}")
    first_stale = body.get("name") != token
    first_server = served_by(body)
    fresh_after = 0.0
    if first_stale:
        fresh_after = None
        while time.perf_counter() - written < poll_until_fresh_s:
            time.sleep(0.01)
            _, _, again = client.call("GET", f"/users/{user_id}")
            if again.get("name") == token:
                fresh_after = time.perf_counter() - written
                break
    client.close()
    return {"write_ok": True, "write_ms": (written - started) * 1000, "stale": first_stale,
            "server": first_server, "stale_ms": None if fresh_after is None else fresh_after * 1000}


def write_read_pairs(stack, pairs: int, first_user: int, poll_until_fresh_s: float = 3.0,
                     parallel: int = 6) -> pd.DataFrame:
    """`pairs` clients, each writing one user then reading it back (`parallel` at a time)."""
    url = stack.status()["url"]
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda i: _write_then_read(url, first_user + i, poll_until_fresh_s),
                                range(pairs)))
    return pd.DataFrame([r for r in results if r["write_ok"]])


def summarise_pairs(frame: pd.DataFrame) -> dict:
    """Anomaly rate, stale window and write latency of a write_read_pairs frame (pure)."""
    stale_ms = frame["stale_ms"].fillna(0.0) if "stale_ms" in frame else pd.Series(dtype=float)
    return {"pairs": len(frame), "anomaly_rate": float(frame["stale"].mean()) if len(frame) else float("nan"),
            "stale_ms_median": float(stale_ms[frame["stale"]].median()) if frame["stale"].any() else 0.0,
            "write_ms_p50": float(frame["write_ms"].median()) if len(frame) else float("nan"),
            "read_on_replica": float((frame["server"] == "replica").mean()) if len(frame) else float("nan")}


@experiment
def anomaly_by_delay(stack, delays=(0, 100, 300, 1000), pairs: int = 24, progress=None) -> pd.DataFrame:
    """For each replica apply delay: PUT then GET the same user through the app; how often the
    GET misses the write, and how long until the replica shows it."""
    rows = []
    for i, delay in enumerate(delays):
        stack.apply(replica_delay_ms=delay)
        frame = write_read_pairs(stack, pairs, first_user=1000 + 100 * i, poll_until_fresh_s=delay / 1000 + 2)
        rows.append({"delay_ms": delay, **summarise_pairs(frame)})
        if progress:
            progress(f"delay {delay} ms: {rows[-1]['anomaly_rate']:.0%} of reads missed the write")
    return pd.DataFrame(rows).set_index("delay_ms")


# -- 4. fixes -------------------------------------------------------------------------

@experiment
def sync_commit_tradeoff(stack, delays=(0, 200), modes=("on", "remote_write", "remote_apply"), pairs: int = 12,
                         progress=None) -> pd.DataFrame:
    """Write latency and anomaly rate for each synchronous_commit mode, at each replica delay."""
    rows = []
    for i, delay in enumerate(delays):
        for j, mode in enumerate(modes):
            stack.apply(replica_delay_ms=delay, synchronous_commit=mode)
            frame = write_read_pairs(stack, pairs, first_user=3000 + 100 * (i * len(modes) + j),
                                     poll_until_fresh_s=delay / 1000 + 2)
            rows.append({"delay_ms": delay, "synchronous_commit": mode, **summarise_pairs(frame)})
            if progress:
                progress(f"delay {delay} ms, {mode:12}: write p50 {rows[-1]['write_ms_p50']:.1f} ms, "
                         f"{rows[-1]['anomaly_rate']:.0%} stale reads")
    stack.apply(synchronous_commit="on", replica_delay_ms=0)
    return pd.DataFrame(rows).set_index(["delay_ms", "synchronous_commit"])


class WindowRouter:
    """Read-after-write from the primary for a while: after a client writes, its reads go to the
    primary for `window_s`; everyone else's go to the replica. Connections are psycopg, autocommit."""

    def __init__(self, primary, replica, window_s: float):
        self.primary, self.replica, self.window_s = primary, replica, window_s
        self.last_write: dict[str, float] = {}

    def write(self, client: str, query: str, params=()):
        row = self.primary.execute(query, params).fetchone()
        self.last_write[client] = time.monotonic()
        return row

    def read(self, client: str, query: str, params=()):
        recent = time.monotonic() - self.last_write.get(client, float("-inf")) < self.window_s
        return (self.primary if recent else self.replica).execute(query, params).fetchone()


READ_NAME = "SELECT name, pg_is_in_recovery() FROM users WHERE id = %s"
WRITE_NAME = "UPDATE users SET name = %s, updated_at = now() WHERE id = %s RETURNING id"


def router_trial(stack, make_router, writes: int = 6, first_user: int = 5000,
                 read_after_s=(0.0, 0.2, 0.45)) -> dict:
    """A writer client writes a user, then reads it back at each of `read_after_s` (stale?); another
    client reads the same user at once. Returns the writer's stale-read rate, the share of all reads
    the replica answered (each server's own word: pg_is_in_recovery()), and that share per reader:
    "other", and "writer+<s>" for each read-back time."""
    on_replica: dict[str, list[bool]] = {"other": [], **{f"writer+{at:g}s": [] for at in read_after_s}}
    with clients.connect(stack, "primary", user="app") as primary, clients.connect(stack, "replica", user="app") as replica:
        router = make_router(primary, replica)
        stale = reads = 0
        for i in range(writes):
            token = uuid.uuid4().hex[:12]
            user = first_user + i
            router.write("writer", WRITE_NAME, (token, user))
            written = time.monotonic()
            _, other_standby = router.read("someone-else", READ_NAME, (user,))
            on_replica["other"].append(bool(other_standby))
            for at in read_after_s:
                time.sleep(max(0.0, written + at - time.monotonic()))
                name, standby = router.read("writer", READ_NAME, (user,))
                stale, reads = stale + (name != token), reads + 1
                on_replica[f"writer+{at:g}s"].append(bool(standby))
    every = [v for values in on_replica.values() for v in values]
    return {"stale_reads": stale / reads, "reads_on_replica": sum(every) / len(every),
            "by_reader": {k: sum(v) / len(v) for k, v in on_replica.items()}}


@experiment
def window_fix(stack, delay_ms: int = 300, windows=(0.0, 0.1, 0.5), writes: int = 4) -> pd.DataFrame:
    """Read-after-write from the primary for a window, tried with windows shorter and longer than
    the replica's delay: stale reads seen by the writer, and the share of all reads left on the replica."""
    stack.apply(replica_delay_ms=delay_ms)
    rows = []
    for k, window in enumerate(windows):
        trial = router_trial(stack, lambda p, r, w=window: WindowRouter(p, r, w), writes=writes,
                             first_user=5000 + 100 * k)
        trial.pop("by_reader")
        rows.append({"window_ms": int(round(window * 1000)), **trial})
    return pd.DataFrame(rows).set_index("window_ms")


# -- 5. the replica dies --------------------------------------------------------------

@experiment
def replica_dies(stack, seconds: float = 4.0, readers: int = 4, kill_at_s: float = 1.0) -> pd.DataFrame:
    """Readers GET users through the app while postgres-replica is killed; per 0.25 s: who answered
    (the response's "db" field) and errors. The stack is healed afterwards."""
    url = stack.status()["url"]
    outcomes: list[tuple[float, str]] = []
    lock = threading.Lock()
    start = time.monotonic()

    def reader(n: int):
        client = Http(url, timeout=3)
        i = 0
        while time.monotonic() - start < seconds:
            i += 1
            try:
                status, _, body = client.call("GET", f"/users/{200 + (n * 997 + i) % 5000}")
                what = served_by(body) if status == 200 else f"error {status}"
            except OSError as exc:
                what = f"error {type(exc).__name__}"
            with lock:
                outcomes.append((time.monotonic() - start, what or "other"))
        client.close()

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(readers)]
    for t in threads:
        t.start()
    time.sleep(kill_at_s)
    fault.kill("postgres-replica", stack=stack)
    for t in threads:
        t.join()
    stack.up(progress=None)        # the reconciler starts the replica again
    frame = pd.DataFrame(outcomes, columns=["t", "answered_by"])
    frame["bucket_s"] = (frame["t"] // 0.25) * 0.25
    table = frame.groupby(["bucket_s", "answered_by"]).size().unstack(fill_value=0)
    table.attrs["killed_at_s"] = kill_at_s
    return table


def wait_replica_serving(stack, timeout_s: float = 15.0) -> bool:
    """Until reads through the app come from the replica again (after a heal)."""
    client = Http(stack.status()["url"])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            status, _, body = client.call("GET", "/users/7")
            if status == 200 and served_by(body) == "replica":
                return True
            time.sleep(0.2)
        return False
    finally:
        client.close()
