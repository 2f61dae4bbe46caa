"""Lesson 8's instruments: one load run, every layer asked what it did meanwhile.

    prof = profile(stack, sc)          # the scenario's workload, and during it:
    prof.layers                        #   Server-Timing per layer, summed by each replica (/metrics)
    prof.probes                        #   Server-Timing headers of sampled requests
    prof.nginx                         #   per upstream, from nginx's access log ($upstream_response_time)
    prof.statements                    #   pg_stat_statements' top statements on both servers
    prof.redis                         #   Redis INFO: hits, misses, commands
    prof.replicas                      #   each replica's work slots and pools (/metrics)
    prof.flame                         #   a pyinstrument profile of the busiest replica
    suspect(prof)                      # which part of the path the evidence points at
    fix_in_order(stack, sc)            # the article's fixes one by one, measured after each

Everything is read from the servers through backend-neutral calls (stack.clients,
stack.course.readings/servers); the access log is read where the backend keeps it.
"""
from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from .. import clients
from ..load import LoadSpec, run_load
from ..scenarios import FIX_STEPS, REPORT_MS
from . import readings, servers
from .readings import access_log_lines, read_access_log  # noqa: F401 - lab 8 reads px.access_log_lines
from .poller import Poller
from .experiments import experiment, parse_server_timing

LAYERS = ("queue", "db", "cache", "app")
WARM_UP_S = 0.7


# -- one measurement ----------------------------------------------------------------------------

def summary(result) -> dict:
    lat = result.latency_ms()
    out = {"p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "throughput_rps": result.throughput_rps,
           "errors": result.error_count, "generator_bottleneck": result.generator_bottleneck}
    writes = result.requests.get("PUT /users/{id}")
    if writes is not None and writes.count:
        out["put_p99_ms"] = writes.latency.summary()["p99_ms"]
    return out


def measure(stack, sc, seconds: float = 3.0) -> dict:
    """The scenario's workload once (again if the generator itself fell behind): p50, p99, rate."""
    result = run_load(sc.workload(stack, seconds=seconds))
    if result.generator_bottleneck:
        result = run_load(sc.workload(stack, seconds=seconds))
    return summary(result)


# -- nginx's access log: read in stack.course.readings ------------------------------------------

def per_upstream(log: pd.DataFrame, stack) -> pd.DataFrame:
    """Requests, share and upstream response time (p50/p99, ms) per app replica, from nginx's log:
    by the name the replica answered with (older lines: by its loopback port, the local backend's)."""
    ports = {f"127.0.0.1:{clients.access(stack).ports.app(i)}": f"app-{i}" for i in range(1, 17)}
    log = log[log["upstream_s"].notna()]
    named = log["replica"].where(log["replica"].notna(), log["upstream"].map(lambda u: ports.get(u, u)))
    rows = []
    for replica, part in log.groupby(named):
        t = part["upstream_s"] * 1000
        rows.append({"replica": replica, "requests": len(part),
                     "share": len(part) / len(log), "upstream_p50_ms": t.quantile(0.5),
                     "upstream_p99_ms": t.quantile(0.99),
                     "nginx_own_ms": ((part["request_s"] - part["upstream_s"]) * 1000).mean()})
    return pd.DataFrame(rows).set_index("replica").sort_index() if rows else pd.DataFrame()


# -- PostgreSQL and Redis -----------------------------------------------------------------------

def reset_statements(stack) -> None:
    servers.ensure_pg_stat_statements(stack)
    clients.wait_replayed(stack)      # the standby has the extension too before it is asked
    for role in ("primary", "replica"):
        with servers.pg(stack, role) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")


def top_statements(stack, limit: int = 4) -> pd.DataFrame:
    """Each server's statements by total execution time (pg_stat_statements), the heaviest first."""
    rows = []
    for role in ("primary", "replica"):
        with servers.pg(stack, role) as conn:
            found = conn.execute(
                "SELECT query, calls, total_exec_time, mean_exec_time FROM pg_stat_statements "
                "WHERE query NOT ILIKE '%%pg_stat_statements%%' ORDER BY total_exec_time DESC LIMIT %s",
                (limit,)).fetchall()
        rows += [{"server": role, "query": q[:90], "calls": c, "total_ms": t, "mean_ms": m} for q, c, t, m in found]
    return pd.DataFrame(rows, columns=["server", "query", "calls", "total_ms", "mean_ms"])


def redis_info(stack) -> dict:
    info = servers.redis_client(stack).info()
    return {"hits": info["keyspace_hits"], "misses": info["keyspace_misses"],
            "commands": info["total_commands_processed"], "clients": info["connected_clients"]}


def replication_lag(stack) -> dict:
    return clients.replication_status(stack)


# -- the replicas ---------------------------------------------------------------------------------

ADMIN_ROUTES = ("metrics", "admin_profile", "admin_config", "health")


def layer_table(before: dict, after: dict, flames: dict | None = None) -> pd.DataFrame:
    """Per replica: requests served in the window and the mean ms per request in each layer
    (the Server-Timing durations each replica sums in /metrics). The measuring requests
    themselves (/metrics, the profile window) are left out."""
    rows = []
    for name, m in after.items():
        b = before.get(name, {"requests": 0, "layer_seconds": {}, "process": {"cpu_s": 0}, "by_route": {}})
        admin = sum(m["by_route"].get(r, 0) - b["by_route"].get(r, 0) for r in ADMIN_ROUTES)
        n = m["requests"] - b["requests"] - admin
        row = {"replica": name, "requests": n,
               "cpu_s": m["process"].get("cpu_s", 0) - b["process"].get("cpu_s", 0)}
        for layer in LAYERS:
            spent = m["layer_seconds"].get(layer, 0.0) - b["layer_seconds"].get(layer, 0.0)
            if layer == "app" and flames and name in flames:
                spent -= flames[name]["seconds"]
            row[f"{layer}_ms"] = max(0.0, 1000 * spent / n) if n else 0.0
        row["pool_waiting"] = sum(p["waiting"] for p in m["pools"].values())
        row["slots"] = m["work"]["concurrency"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("replica")


class Probe(Poller):
    """Sampled requests through nginx during the load, keeping each Server-Timing header."""
    join_timeout_s = 15

    def __init__(self, url: str, every_s: float = 0.05):
        super().__init__(every_s)
        self.url, self.rows, self._sent = url, [], 0

    def poll(self, _):
        paths = [("GET report", f"/work?kind=db&ms={REPORT_MS}"), ("GET /users/{id}", "/users/{i}")]
        label, path = paths[self._sent % 2]
        self._sent += 1
        i = self._sent
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url + path.format(i=1 + i % 500), timeout=10) as resp:
                resp.read()
                timing = parse_server_timing(resp.headers.get("Server-Timing", ""))
                self.rows.append({"request": label, "replica": resp.headers.get("X-Replica"),
                                  "client_ms": (time.perf_counter() - start) * 1000, **timing})
        except OSError:
            pass


def profile_replicas(stack, names, seconds: float, interval_ms: float = 1.0) -> dict:
    """Every named replica samples itself for the same window (in parallel)."""
    with ThreadPoolExecutor(max(1, len(names))) as pool:
        futures = {n: pool.submit(clients.profile_replica, stack, int(n.split("-")[1]), seconds, interval_ms)
                   for n in names}
        return {n: f.result() for n, f in futures.items()}


@dataclass
class Profile:
    load: dict
    layers: pd.DataFrame
    probes: pd.DataFrame
    nginx: pd.DataFrame
    statements: pd.DataFrame
    redis: dict
    replication: dict
    flames: dict = field(default_factory=dict)

    @property
    def busiest(self) -> str:
        return self.layers["requests"].idxmax()

    @property
    def flame(self) -> dict:
        return self.flames[self.busiest]

    def cpu_share(self, replica: str | None = None) -> float:
        """The share of the profiled window the replica's thread spent on CPU (pyinstrument's own clock)."""
        f = self.flames[replica or self.busiest]
        return f["cpu_seconds"] / f["seconds"]


@experiment
def profile(stack, sc, seconds: float = 3.0, sample_replicas: bool = True) -> Profile:
    """The scenario's workload for `seconds`, with every layer asked what it did meanwhile."""
    reset_statements(stack)
    before, redis_before = readings.replica_metrics(stack), redis_info(stack)
    since = time.time()
    load = {}

    def run():
        load["result"] = run_load(sc.workload(stack, seconds=seconds))

    runner = threading.Thread(target=run)
    with Probe(stack.status()["url"]) as probe:
        runner.start()
        time.sleep(0.3)          # profile the steady part, not the first arrivals
        flames = profile_replicas(stack, list(before), seconds - 0.6) if sample_replicas else {}
        runner.join()
    after, redis_after = readings.replica_metrics(stack), redis_info(stack)
    replication = replication_lag(stack)
    statements = top_statements(stack)
    time.sleep(1.1)              # nginx flushes its access log buffer every second
    log = read_access_log(stack, since)
    redis = {k: redis_after[k] - redis_before[k] for k in ("hits", "misses", "commands")}
    lookups = redis["hits"] + redis["misses"]
    redis["hit_ratio"] = redis["hits"] / lookups if lookups else None
    return Profile(summary(load["result"]), layer_table(before, after, flames), pd.DataFrame(probe.rows),
                   per_upstream(log, stack), statements, redis, replication, flames)


# -- reading the evidence -------------------------------------------------------------------------

def evidence(prof: Profile) -> pd.DataFrame:
    """The figures that tell the suspects apart, each beside its healthy bound, in the order they
    are read (see suspect): one row per suspect, `over` when the figure passes its bound.

    Healthy, for this workload: a report waits under 5 ms for a pooled connection beyond its own
    40 ms query; no replica takes more than twice its fair share of requests; the median replica's
    requests wait under 5 ms for a work slot; a write's p99 is under 100 ms; the heaviest statement's
    mean is under twice the report's 40 ms; the cache answers at least half the user reads."""
    layers, nginx, probes = prof.layers, prof.nginx, prof.probes
    reports = probes[probes["request"] == "GET report"] if len(probes) else probes
    pool_wait = float((reports["db"] - REPORT_MS).clip(lower=0).median()) if len(reports) else 0.0
    fair = 1 / max(1, len(layers))
    top_share = float(nginx["share"].max()) if len(nginx) else 0.0
    busiest_queue = float(layers["queue_ms"].max()) if len(layers) else 0.0
    median_queue = float(layers["queue_ms"].median()) if len(layers) else 0.0
    put_p99 = prof.load.get("put_p99_ms") or 0.0
    heaviest = float(prof.statements["mean_ms"].max()) if len(prof.statements) else 0.0
    hit = prof.redis.get("hit_ratio")
    rows = [
        ("db_pool", "a report's wait for a connection (ms: Server-Timing db - its 40 ms query)", pool_wait, 5,
         pool_wait > 5),
        ("balancing", "largest replica's share of requests (nginx log), its slot wait above 5 ms", top_share,
         2 * fair, len(layers) > 1 and top_share > 2 * fair and busiest_queue > 5),
        ("app_capacity", "median replica's wait for a work slot (ms, Server-Timing queue)", median_queue, 5,
         median_queue > 5),
        ("replication", "p99 of writes (ms, per request kind at the load generator)", put_p99, 100, put_p99 > 100),
        ("database_cpu", "heaviest statement's mean (ms, pg_stat_statements)", heaviest, 2 * REPORT_MS,
         heaviest > 2 * REPORT_MS),
        ("cache", "Redis hit ratio of user reads", hit if hit is not None else 0.0, 0.5,
         hit is not None and hit < 0.5),
    ]
    return pd.DataFrame(rows, columns=["suspect", "figure", "value", "healthy_bound", "over"]).set_index("suspect")


def suspect(prof: Profile) -> str | None:
    """The first suspect over its bound, read in the order of the path's dependencies: a request
    waiting for a connection holds its work slot (so the slot queue is a consequence), a skewed
    balancer makes one replica queue (so its queue is a consequence), and only then is a queue a
    matter of capacity. None: nothing is over its bound."""
    table = evidence(prof)
    over = table.index[table["over"]]
    return str(over[0]) if len(over) else None


# -- fixing in the article's order ------------------------------------------------------------------

@experiment(each_run=True)
def fix_in_order(stack, sc, seconds: float = 3.0, progress=None) -> pd.DataFrame:
    """Measure the scenario, then apply the article's fixes one at a time (each on top of the last),
    measuring after each (the better of two windows): p50, p99, throughput. Ends with the stack
    fully fixed."""
    rows = [{"step": "0. as found", **measure(stack, sc, seconds)}]
    if progress:
        progress(f"{rows[-1]['step']}: p99 {rows[-1]['p99_ms']:.0f} ms")
    for label, changes in FIX_STEPS:
        stack.apply(**changes)
        # New replicas open their pools on the first requests: warm up, then measure.
        run_load(sc.workload(stack, seconds=WARM_UP_S))
        # Two windows, the one with the lower p99 kept: on two busy cores one stall of the machine
        # (or a new replica's first connections) decides the p99 of a 3 s window (a docker run
        # measured 132 ms right after the scale-out, then 45-58 ms). "As found" needs no second
        # window: its p99 is seconds, not a stall.
        windows = [measure(stack, sc, seconds) for _ in range(2)]
        rows.append({"step": label, **min(windows, key=lambda w: w["p99_ms"])})
        if progress:
            both = " and ".join(f"{w['p99_ms']:.0f}" for w in windows)
            progress(f"{label}: p99 {rows[-1]['p99_ms']:.0f} ms (windows: {both} ms), "
                     f"{rows[-1]['throughput_rps']:.0f} req/s")
    return pd.DataFrame(rows).set_index("step")


def biggest_drop(waterfall: pd.DataFrame) -> str:
    """The step after which p99 fell the most (as a ratio to the step before)."""
    p99 = waterfall["p99_ms"]
    ratios = p99.shift(1) / p99
    return str(ratios.iloc[1:].idxmax())


# -- what the profiler costs -----------------------------------------------------------------------

@experiment
def profiler_cost(stack, seconds: float = 1.0, connections: int = 8, pairs: int = 3) -> pd.DataFrame:
    """Closed-loop cached user reads straight to app-1, without and with pyinstrument sampling it,
    in `pairs` pairs, off-on then on-off in turn: other work on the machine drifts, and a pair
    measured side by side compares like with like. Each column is the median over the runs of that
    mode; `relative_rps` is the median of the pairs' ratios."""
    url = clients.app_url(stack, 1).rstrip("/")
    spec = LoadSpec(url=url, mode="closed", connections=connections, duration_s=seconds, path="/users/1")
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for pair in range(pairs):
        for sampling in ((False, True) if pair % 2 == 0 else (True, False)):   # ABBA: drift cancels
            worker = None
            if sampling:
                worker = ThreadPoolExecutor(1)
                future = worker.submit(clients.profile_replica, stack, 1, seconds + 0.5)
                time.sleep(0.1)
            result = run_load(spec)
            if worker:
                future.result()
                worker.shutdown()
            runs[sampling].append(summary(result))
    ratios = [on["throughput_rps"] / off["throughput_rps"] for off, on in zip(runs[False], runs[True])
              if off["throughput_rps"]]
    rows = []
    for sampling, label in ((False, "off"), (True, "pyinstrument, 1 ms")):
        part = pd.DataFrame(runs[sampling])
        rows.append({"sampling": label, "runs": len(part),
                     **{c: float(part[c].median()) for c in ("p50_ms", "p99_ms", "throughput_rps")},
                     "errors": int(part["errors"].sum()),
                     "generator_bottleneck": bool(part["generator_bottleneck"].any()),
                     # No pair measured (nothing answered): unknown, never "sampling is free".
                     "relative_rps": (float(pd.Series(ratios).median()) if ratios else float("nan"))
                     if sampling else 1.0})
    return pd.DataFrame(rows).set_index("sampling")


def flame_frame(flame: dict) -> pd.DataFrame:
    return pd.DataFrame(flame["frames"])


def hottest_functions(flame: dict, limit: int = 8) -> pd.DataFrame:
    """Functions by self time (time with the function itself on top of the stack)."""
    frame = flame_frame(flame)
    if frame.empty:
        return frame
    total = flame["seconds"]
    grouped = frame.groupby(["function", "where"])["self_seconds"].sum().sort_values(ascending=False)
    out = grouped.head(limit).reset_index()
    out["share"] = out["self_seconds"] / total
    return out
