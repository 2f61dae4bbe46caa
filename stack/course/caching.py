"""Lesson 7's experiments: cache-aside in Redis, measured at the servers.

Every experiment asks the servers what happened: Redis INFO (keyspace hits and
misses, evictions), TTL and KEYS over the Redis protocol, each replica's
/metrics, and PostgreSQL's own count of the statements it ran
(pg_stat_statements). Two kinds of clients are used:

* the live app (GET/PUT /users/{id} through nginx), whose cache-aside path is in
  stack/app/service.py;
* `CacheAside`, the same pattern written in a few lines of Python against the
  same Redis and PostgreSQL, so races and stampede fixes can be staged step by
  step (lab 7 asks the learner to write it).
"""
from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import pandas as pd
import psycopg

from .. import fault
from ..load import LoadSpec, RequestMix, run_load
from . import readings, servers
from .predictions import experiment




def key(user_id: int) -> str:
    return f"user:{user_id}"


# -- talking to the app ---------------------------------------------------------------

def http(stack, method: str, path: str, body: dict | None = None) -> tuple[dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(stack.status()["url"] + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read()), {k.lower(): v for k, v in resp.headers.items()}


def app_cache_counters(stack) -> dict:
    """Cache hits, misses, errors and DB queries summed over every replica's /metrics."""
    total = {"hits": 0, "misses": 0, "errors": 0, "db_queries": 0, "server_errors": 0}
    for m in readings.replica_metrics(stack).values():
        for k in ("hits", "misses", "errors"):
            total[k] += m["cache"][k]
        total["db_queries"] += m["db_queries"]
        total["server_errors"] += m["errors"]
    return total


def flush_cache(stack) -> None:
    servers.redis_client(stack).flushdb()


@dataclass
class Counters:
    """Redis INFO, the replicas' counters and PostgreSQL's user lookups, read together."""
    redis: dict
    app: dict
    db: dict
    t: float = field(default_factory=time.time)

    @classmethod
    def read(cls, stack) -> "Counters":
        return cls(servers.redis_stats(stack), app_cache_counters(stack), servers.user_reads(stack))

    def since(self, before: "Counters") -> dict:
        seconds = self.t - before.t
        hits = self.redis["hits"] - before.redis["hits"]
        misses = self.redis["misses"] - before.redis["misses"]
        app_hits = self.app["hits"] - before.app["hits"]
        app_misses = self.app["misses"] - before.app["misses"]
        lookups = sum(self.db.values()) - sum(before.db.values())
        return {"redis_hit_ratio": hits / (hits + misses) if hits + misses else float("nan"),
                "app_hit_ratio": app_hits / (app_hits + app_misses) if app_hits + app_misses else float("nan"),
                "redis_hits": hits, "redis_misses": misses, "db_lookups": lookups,
                "db_lookups_per_s": lookups / seconds, "evicted": self.redis["evicted"] - before.redis["evicted"],
                "cache_errors": self.app["errors"] - before.app["errors"],
                "keys": self.redis["keys"], "used_memory_mb": self.redis["used_memory"] / 2**20}


def user_load(stack, rate: float, seconds: float, keys: str = "zipf", key_count: int = 1000, seed: int = 7):
    spec = LoadSpec(url=stack.status()["url"], mode="open", rate=rate, duration_s=seconds, seed=seed,
                    mix=RequestMix.users(read_ratio=1.0, keys=keys, n=key_count), max_send_lag_ms=10)
    return run_load(spec)


# -- 1. cache-aside, seen in the app and in Redis ------------------------------------------

@experiment
def trace_cache_aside(stack, user_id: int = 42) -> pd.DataFrame:
    """GET one user three times on an empty cache; per request: who answered, and what the servers counted."""
    r = servers.redis_client(stack)
    r.delete(key(user_id))
    rows = []
    for attempt in ("first (cold)", "second", "third"):
        before = servers.user_reads(stack)
        body, headers = http(stack, "GET", f"/users/{user_id}")
        after = servers.user_reads(stack)
        rows.append({"request": attempt, "source": body["source"], "X-Read-Source": headers["x-read-source"],
                     "db_lookups_at_postgres": sum(after.values()) - sum(before.values()),
                     "ttl_in_redis_s": r.ttl(key(user_id))})
    return pd.DataFrame(rows).set_index("request")


def cached_keys(stack, pattern: str = "user:*", limit: int = 10) -> pd.DataFrame:
    """Keys Redis holds, each with its remaining TTL and size, read over the Redis protocol (SCAN, not KEYS)."""
    r = servers.redis_client(stack)
    rows = []
    for name in r.scan_iter(match=pattern, count=1000):
        rows.append({"key": name, "ttl_s": r.ttl(name), "bytes": r.memory_usage(name)})
        if len(rows) >= limit:
            break
    return pd.DataFrame(rows, columns=["key", "ttl_s", "bytes"]).set_index("key")


# -- 2. TTL and key distribution -> hit ratio and DB load ---------------------------------

def steady_hit_ratio(rate_per_key: float, ttl_s: float) -> float:
    """Cache-aside with a fixed TTL, one key read at rate λ (Poisson): each miss fills the key, which
    then answers λ·T reads until it expires, so hits / (hits + misses) = λT / (λT + 1)."""
    if ttl_s <= 0 or rate_per_key <= 0:
        return 0.0
    n = rate_per_key * ttl_s
    return n / (n + 1)


@experiment
def hit_ratio_by_ttl(stack, ttls, kinds=("uniform", "zipf"), rate: float = 400, seconds: float = 2.5,
                     key_count: int = 500, progress=None) -> pd.DataFrame:
    """Open-loop user reads at `rate` for each (key distribution, TTL), from an empty cache.

    One row each: hit ratio as Redis counted it (INFO keyspace_hits/misses) and as the
    replicas counted it, the user lookups PostgreSQL ran, per second, and p99."""
    rows = []
    for kind in kinds:
        for ttl in ttls:
            stack.apply(ttl_s=ttl)
            flush_cache(stack)
            before = Counters.read(stack)
            result = user_load(stack, rate, seconds, keys=kind, key_count=key_count)
            delta = Counters.read(stack).since(before)
            rows.append({"keys": kind, "ttl_s": ttl, "requests": result.responses,
                         "hit_ratio": delta["redis_hit_ratio"] if ttl else 0.0,
                         "app_hit_ratio": delta["app_hit_ratio"] if ttl else 0.0,
                         "redis_misses": delta["redis_misses"], "db_lookups": delta["db_lookups"],
                         "db_lookups_per_s": delta["db_lookups"] / seconds,
                         "p99_ms": result.latency_ms()["p99_ms"], "errors": result.error_count})
            if progress:
                progress(f"{kind:8} TTL {ttl:>3} s: hit ratio {rows[-1]['hit_ratio']:.0%}, "
                         f"{rows[-1]['db_lookups_per_s']:.0f} DB lookups/s, p99 {rows[-1]['p99_ms']:.1f} ms")
    return pd.DataFrame(rows).set_index(["keys", "ttl_s"])


def dashboard_load(stack, rate: float = 300, key_count: int = 1000) -> LoadSpec:
    """Ten minutes of Zipf user reads for the live dashboard (stopped with the dashboard)."""
    return LoadSpec(url=stack.status()["url"], mode="open", rate=rate, duration_s=600,
                    mix=RequestMix.users(read_ratio=1.0, keys="zipf", n=key_count))


# -- 3. staleness ------------------------------------------------------------------------

def _write_behind_the_cache(stack, user_id: int, name: str) -> None:
    """An UPDATE straight into PostgreSQL (a batch job, another service): nobody invalidates."""
    with servers.pg(stack, "primary") as conn:
        conn.execute("UPDATE users SET name = %s, updated_at = now() WHERE id = %s", (name, user_id))


def _wait_replayed(stack, user_id: int, name: str, timeout_s: float = 5.0) -> None:
    deadline = time.time() + timeout_s
    with servers.pg(stack, "replica") as conn:
        while conn.execute("SELECT name FROM users WHERE id = %s", (user_id,)).fetchone()[0] != name:
            if time.time() > deadline:
                raise RuntimeError("the replica did not replay the write within 5 s")
            time.sleep(0.005)


@experiment
def stale_reads_by_ttl(stack, ttls=(1, 2), user_id: int = 77, poll_ms: float = 50) -> pd.DataFrame:
    """A write that bypasses the cache: how long reads through the app keep returning the old row.

    Per TTL: warm the key through the app, UPDATE the row in PostgreSQL directly (and wait
    until the replica has it, so only the cache can be stale), then read every `poll_ms`
    until the new value appears."""
    rows = []
    for ttl in ttls:
        stack.apply(ttl_s=ttl)
        servers.redis_client(stack).delete(key(user_id))
        http(stack, "GET", f"/users/{user_id}")            # populate: the TTL starts now
        new = f"renamed-{time.time_ns()}"
        _write_behind_the_cache(stack, user_id, new)
        # The clock starts at the commit, and the TTL is read after it: the copy cannot expire
        # earlier than `remaining` from now, however long the replica then takes to replay.
        written = time.perf_counter()
        remaining = servers.redis_client(stack).pttl(key(user_id)) / 1000
        _wait_replayed(stack, user_id, new)
        stale = reads = 0
        while True:
            body, _ = http(stack, "GET", f"/users/{user_id}")
            reads += 1
            if body["name"] == new:
                break
            stale += 1
            time.sleep(poll_ms / 1000)
        rows.append({"ttl_s": ttl, "ttl_left_at_write_s": remaining, "stale_reads": stale, "reads": reads,
                     "stale_for_s": time.perf_counter() - written})
    return pd.DataFrame(rows).set_index("ttl_s")


@experiment
def stale_after_put(stack, tries: int = 40, user_id: int = 88) -> pd.DataFrame:
    """PUT through the app (it deletes the key after the commit), then GET at once: how often is the
    answer the old row? Once with reads on the streaming replica, once on the primary."""
    rows = []
    for read_from in ("replica", "primary"):
        stack.apply(read_from=read_from, ttl_s=300)
        stale = 0
        for i in range(tries):
            name = f"put-{read_from}-{i}-{time.time_ns()}"
            http(stack, "PUT", f"/users/{user_id}", {"name": name})
            body, _ = http(stack, "GET", f"/users/{user_id}")
            cached_now = json.loads(servers.redis_client(stack).get(key(user_id)) or "{}").get("name")
            stale += body["name"] != name or cached_now != name
        rows.append({"reads_from": read_from, "tries": tries, "stale_after_put": stale})
    stack.apply(read_from="replica")
    return pd.DataFrame(rows).set_index("reads_from")


# -- cache-aside in a few lines of Python (the lab's subject) ------------------------------

# The last column is the server's clock when it ran the lookup (seconds since the epoch).
SLOW_LOOKUP = ("SELECT id, name, email, region, updated_at::text, extract(epoch FROM clock_timestamp())::float8 "
               "FROM users, pg_sleep(%s) AS slow_lookup WHERE id = %s")
USER_FIELDS = ("id", "name", "email", "region", "updated_at")
SLOW_LOOKUP_PATTERN = "%pg_sleep($1) AS slow_lookup%"


class LabDB:
    """The database side for `CacheAside` and the lab: user lookups on the primary, counted by
    PostgreSQL itself. `cost_ms` models an expensive query (pg_sleep: the wait is in the server).
    With `timed`, `ran_at` collects the server's clock of every lookup that found its user."""

    def __init__(self, stack, cost_ms: float = 0.0, timed: bool = False):
        self.stack, self.cost_ms = stack, cost_ms
        self.ran_at: list[float] | None = [] if timed else None
        self._local = threading.local()
        servers.ensure_pg_stat_statements(stack)

    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = psycopg.connect(servers.dsn(self.stack, "primary", user="app"),
                                                      autocommit=True)
        return conn

    def fetch_user(self, user_id: int) -> dict | None:
        row = self._conn().execute(SLOW_LOOKUP, (self.cost_ms / 1000, user_id)).fetchone()
        if row is None:
            return None
        if self.ran_at is not None:
            self.ran_at.append(row[-1])         # list.append is atomic: reader threads share it
        return dict(zip(USER_FIELDS, row))

    def update_user(self, user_id: int, **fields) -> None:
        sets = ", ".join(f"{name} = %s" for name in fields if name in ("name", "email", "region"))
        self._conn().execute(f"UPDATE users SET {sets}, updated_at = now() WHERE id = %s",
                             (*fields.values(), user_id))

    def lookups(self) -> int:
        """User lookups this kind of client ever ran, as pg_stat_statements on the primary counts them."""
        return servers.statement_calls(self.stack, SLOW_LOOKUP_PATTERN, "primary")

    def server_clock(self) -> float:
        return self._conn().execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]


class CacheAside:
    """The article's getCachedUser, plus the stampede fixes, against the live Redis and PostgreSQL.

    strategy: "plain" (check, miss -> DB, populate), "lock" (one caller per key fetches;
    the others wait for the cache), "early" (probabilistic early refresh, XFetch), or
    "jitter" (plain, with the TTL spread by +-jitter)."""

    def __init__(self, cache, db: LabDB, ttl_s: float = 300, strategy: str = "plain", jitter: float = 0.0,
                 beta: float = 1.0, rng: random.Random | None = None):
        self.cache, self.db, self.ttl_s, self.strategy = cache, db, ttl_s, strategy
        self.jitter, self.beta, self.rng = jitter, beta, rng or random.Random(7)

    def ttl_ms(self) -> int:
        spread = 1 + self.jitter * (2 * self.rng.random() - 1)
        return max(1, int(self.ttl_s * 1000 * spread))

    def _populate(self, user_id: int) -> dict | None:
        started = time.perf_counter()
        user = self.db.fetch_user(user_id)
        if user is not None:
            cost = time.perf_counter() - started
            self.cache.set(key(user_id), json.dumps({"user": user, "cost_s": cost}), px=self.ttl_ms())
        return user

    def get(self, user_id: int) -> dict | None:
        if self.strategy == "early":
            return self._get_early(user_id)
        cached = self.cache.get(key(user_id))
        if cached is not None:
            return json.loads(cached)["user"]
        if self.strategy != "lock":
            return self._populate(user_id)
        return self._get_locked(user_id)

    def _get_locked(self, user_id: int, wait_s: float = 5.0) -> dict | None:
        lock = f"lock:{key(user_id)}"
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            # SET NX PX: one caller wins; the lock expires by itself if its holder dies.
            if self.cache.set(lock, "1", nx=True, px=max(1000, int(self.db.cost_ms * 10))):
                try:
                    # Check again: the last holder may have filled the key and let go of the lock
                    # between our miss and our win (a busy machine widens that gap to many ms).
                    cached = self.cache.get(key(user_id))
                    if cached is not None:
                        return json.loads(cached)["user"]
                    return self._populate(user_id)
                finally:
                    self.cache.delete(lock)
            time.sleep(0.005)
            cached = self.cache.get(key(user_id))
            if cached is not None:
                return json.loads(cached)["user"]
        return self._populate(user_id)      # waited too long: fetch rather than fail

    def _get_early(self, user_id: int) -> dict | None:
        """XFetch (Vattani et al., 2015): refresh early with a probability that grows as expiry nears,
        scaled by how long a refresh takes: -cost * beta * ln(U) >= time left."""
        pipe = self.cache.pipeline()
        pipe.get(key(user_id))
        pipe.pttl(key(user_id))
        cached, left_ms = pipe.execute()
        if cached is not None:
            entry = json.loads(cached)
            gap = -entry["cost_s"] * self.beta * math.log(max(self.rng.random(), 1e-12))
            if gap < left_ms / 1000:
                return entry["user"]
        return self._populate(user_id)


# -- 4. the race of invalidate-on-write -----------------------------------------------

@experiment
def invalidation_race(stack, user_id: int = 99) -> pd.DataFrame:
    """Two clients, steps interleaved by hand: a reader misses and reads the row; a writer updates it
    and deletes the key; the reader, late, caches what it read. The cache now disagrees with the DB."""
    r = servers.redis_client(stack)
    db = LabDB(stack)
    r.delete(key(user_id))
    steps = []

    def note(who, what):
        cached = r.get(key(user_id))
        steps.append({"step": len(steps) + 1, "who": who, "what": what,
                      "cache holds": json.loads(cached)["name"] if cached else "(nothing)",
                      "database holds": db.fetch_user(user_id)["name"]})

    db.update_user(user_id, name="before")
    note("-", "start: the row says 'before', nothing cached")
    assert r.get(key(user_id)) is None
    seen = db.fetch_user(user_id)
    note("reader", "cache miss; reads the row from the database")
    db.update_user(user_id, name="after")
    note("writer", "UPDATE ... SET name = 'after' (committed)")
    r.delete(key(user_id))
    note("writer", "invalidates: DEL user:99")
    r.set(key(user_id), json.dumps(seen), ex=300)
    note("reader", "populates the cache with what it read (300 s)")
    return pd.DataFrame(steps).set_index("step")


# -- 5. stampede ------------------------------------------------------------------------

@experiment
def stampede(stack, strategies=("plain", "jitter", "lock", "early"), clients: int = 16, seconds: float = 2.0,
             ttl_s: float = 0.5, cost_ms: float = 50, user_id: int = 7) -> pd.DataFrame:
    """One hot key read by `clients` threads in a loop for `seconds`; it expires every `ttl_s`.
    The lookup costs `cost_ms` in PostgreSQL. Per strategy: lookups PostgreSQL ran
    (pg_stat_statements), the most run at once, and the readers' latency."""
    cache = servers.redis_client(stack)
    rows = []
    for strategy in strategies:
        db = LabDB(stack, cost_ms=cost_ms)
        aside = CacheAside(cache, db, ttl_s=ttl_s, strategy=strategy, jitter=0.5 if strategy == "jitter" else 0)
        cache.delete(key(user_id))
        aside.get(user_id)                          # warm: the key exists when the run starts
        latencies, lock = [], threading.Lock()
        in_db = {"now": 0, "peak": 0}
        original = db.fetch_user

        def counted(uid):
            with lock:
                in_db["now"] += 1
                in_db["peak"] = max(in_db["peak"], in_db["now"])
            try:
                return original(uid)
            finally:
                with lock:
                    in_db["now"] -= 1
        db.fetch_user = counted
        start = threading.Barrier(clients + 1)
        stop_at = [0.0]

        def reader(i):
            mine = CacheAside(cache, db, ttl_s=ttl_s, strategy=strategy, jitter=aside.jitter,
                              rng=random.Random(i))
            db._conn()
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                mine.get(user_id)
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.002)
        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        before = db.lookups()
        stop_at[0] = time.perf_counter() + seconds + 0.05
        start.wait()
        for t in threads:
            t.join()
        lookups = db.lookups() - before
        s = pd.Series(latencies)
        rows.append({"strategy": strategy, "reads": len(latencies), "db_lookups": lookups,
                     "expiries": seconds / ttl_s, "lookups_per_expiry": lookups / (seconds / ttl_s),
                     "peak_concurrent_lookups": in_db["peak"], "p50_ms": s.quantile(0.5),
                     # Reads that waited out a lookup (90% of its cost): the users who felt the database.
                     # Not half of it: 16 reader threads on two busy cores see stalls of 25-40 ms of
                     # their own (10-20 such reads a run on Swarm), which made early refresh look no better.
                     "slow_reads": int((s > 0.9 * cost_ms).sum()), "max_ms": s.max()})
    return pd.DataFrame(rows).set_index("strategy")


@experiment
def synchronized_expiry(stack, jitters=(0.0, 0.5), keys: int = 200, ttl_s: float = 1.0, cost_ms: float = 5,
                        clients: int = 16, seconds: float | None = None) -> pd.DataFrame:
    """Many keys cached at the same moment (a warm-up, a deploy) expire together. Readers hit random
    keys; PostgreSQL stamps every lookup with its own clock, so the worst 100 ms is counted exactly
    (a sampler thread polling a counter would be starved by the readers on a busy machine).
    The run lasts `seconds` (default 1.6 TTLs: every key's first expiry, even at +50% jitter, and
    not yet the second one of keys cached together)."""
    seconds = 1.6 * ttl_s if seconds is None else seconds
    cache = servers.redis_client(stack)
    rows = []
    for jitter in jitters:
        db = LabDB(stack, cost_ms=cost_ms, timed=True)
        warm = CacheAside(cache, db, ttl_s=ttl_s, jitter=jitter)
        for uid in range(1, keys + 1):
            cache.delete(key(uid))
        connected, go, stop = threading.Barrier(clients + 1), threading.Event(), threading.Event()

        def reader(i):
            mine = CacheAside(cache, db, ttl_s=ttl_s, jitter=jitter, rng=random.Random(100 + i))
            pick = random.Random(i)
            db._conn()          # connected before the keys expire: no connection set-up inside the spike
            connected.wait()
            go.wait()
            while not stop.is_set():
                mine.get(pick.randint(1, keys))
        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        connected.wait()
        before, started = db.lookups(), db.server_clock()
        pipe = cache.pipeline()
        for uid in range(1, keys + 1):            # every key cached within a few ms of the others
            pipe.set(key(uid), json.dumps({"user": {"id": uid}, "cost_s": cost_ms / 1000}), px=warm.ttl_ms())
        pipe.execute()
        go.set()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        ran_at = sorted(t - started for t in db.ran_at)
        rows.append({"jitter": jitter, "db_lookups": db.lookups() - before, "stamped_lookups": len(ran_at),
                     "worst_100ms": busiest_window(ran_at, 0.1), "timeline": cumulative(ran_at, seconds, 0.05)})
    return pd.DataFrame(rows).set_index("jitter")


def busiest_window(times: list[float], width_s: float) -> int:
    """The most of the sorted `times` that fall in any `width_s` window."""
    ends = pd.Series(times).searchsorted([t + width_s for t in times])
    return int(max((end - i for i, end in enumerate(ends)), default=0))


def cumulative(times: list[float], seconds: float, step_s: float) -> pd.DataFrame:
    """How many of the sorted `times` came before each step: the curve a counter polled every step draws."""
    steps = [round(i * step_s, 6) for i in range(int(seconds / step_s) + 1)]
    return pd.DataFrame({"t": steps, "lookups": pd.Series(times).searchsorted(steps, side="right")})


# -- 6. eviction -------------------------------------------------------------------------

@experiment
def eviction(stack, policies=("allkeys-lru", "noeviction"), maxmemory_mb: int = 4, rate: float = 300,
             seconds: float = 2.5) -> pd.DataFrame:
    """Redis filled to its maxmemory with other data (no TTL), then user reads through the app.
    Per policy: what Redis evicted (INFO), what the app saw (hits, cache errors, 5xx) and the DB load."""
    rows = []
    try:
        for policy in policies:
            stack.apply(maxmemory_mb=maxmemory_mb, policy="allkeys-lru", ttl_s=300)
            flush_cache(stack)
            r = servers.redis_client(stack)
            blob = "x" * 1000
            i = 0
            # Fill until Redis has to evict: memory is then at its limit, whatever the server's overhead.
            evicted_before = r.info("stats")["evicted_keys"]
            while r.info("stats")["evicted_keys"] == evicted_before:
                pipe = r.pipeline(transaction=False)
                for _ in range(200):
                    pipe.set(f"report:{i}", blob)
                    i += 1
                pipe.execute()
            stack.apply(policy=policy)
            if policy == "noeviction":
                import redis as redis_errors
                try:                          # top up to the limit: Redis refuses writes from here on
                    while True:
                        r.set(f"report:{i}", blob)
                        i += 1
                except redis_errors.exceptions.OutOfMemoryError:
                    pass
            before = Counters.read(stack)
            # Uniform over 10,000 users: ~750 new keys (~150 KB), more than the slack eviction leaves.
            result = user_load(stack, rate, seconds, keys="uniform", key_count=10_000)
            delta = Counters.read(stack).since(before)
            rows.append({"policy": policy, "requests": result.responses, "http_errors": result.error_count,
                         "hit_ratio": delta["app_hit_ratio"], "cache_errors": delta["cache_errors"],
                         "evicted_keys": delta["evicted"], "db_lookups_per_s": delta["db_lookups"] / seconds,
                         "user_keys": sum(1 for _ in r.scan_iter(match="user:*", count=1000)),
                         "used_memory_mb": delta["used_memory_mb"], "p99_ms": result.latency_ms()["p99_ms"]})
    finally:                          # the defaults back, even if a step failed
        flush_cache(stack)
        stack.apply(maxmemory_mb=64, policy="allkeys-lru")
    return pd.DataFrame(rows).set_index("policy")


# -- 7. Redis down ----------------------------------------------------------------------

@experiment
def redis_down(stack, rate: float = 200, seconds: float = 4.0) -> pd.DataFrame:
    """Open-loop user reads; Redis is killed (SIGKILL) a third of the way in. Per 0.5 s interval:
    responses, errors, p99. `attrs["total"]`: the whole run, and the app's counters."""
    stack.apply(ttl_s=300)
    before = Counters.read(stack)

    def kill_later():
        time.sleep(seconds / 3)
        fault.kill("redis", stack=stack)
    killer = threading.Thread(target=kill_later, daemon=True)
    killer.start()
    result = user_load(stack, rate, seconds, keys="zipf", key_count=1000)
    killer.join()
    app_after = app_cache_counters(stack)
    db_after = servers.user_reads(stack)
    frame = result.intervals_dataframe()
    lat = result.latency_ms()
    # A Series: read like a dict (total["errors"]), shown as a table with rounded numbers.
    frame.attrs["total"] = pd.Series({
        "sent": result.sent, "ok": result.ok, "errors": result.error_count, "p50_ms": round(lat["p50_ms"], 2),
        "p99_ms": round(lat["p99_ms"], 2), "killed_at_s": round(seconds / 3, 2),
        "cache_errors": app_after["errors"] - before.app["errors"],
        "db_lookups": sum(db_after.values()) - sum(before.db.values())}, dtype=object, name="the whole run")
    stack.up(progress=None)           # the reconciler starts Redis again (empty: no persistence)
    return frame
