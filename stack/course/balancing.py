"""Lesson 3's experiments: how nginx spreads requests over the replicas, measured live.

Each function shapes the stack with `stack.apply(...)`, sends load or single
requests through nginx, and returns a pandas DataFrame of what the servers
reported: which replica answered (its `X-Replica` header, or its own request
counter on /metrics), how long requests took (the load generator), how many TCP
connections nginx opened to each replica (counted by the replica itself).
It talks to the stack only through backend-neutral calls (`status()`,
`apply()`, `up()`, `stack.fault`).
"""
from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pandas as pd

from .. import fault
from ..load import LoadSpec, run_load
from ..load.fastclient import forwarded_for
from ..load.keys import Keys
from ..load.mix import Request, RequestMix
from .predictions import experiment
from .readings import read_access_log, replica_metrics

SHORT_MS, LONG_MS = 5, 500
WORK = "/work?kind=io&ms={ms}"
# ip_hash reads only the first three octets of an IPv4 address: each client its own /24.
THREE_CLIENTS = ("127.0.10.1", "127.0.20.1", "127.0.30.1")


# -- plumbing ---------------------------------------------------------------------------

def entry_url(stack) -> str:
    return stack.status()["url"]


def _measure(spec: LoadSpec):
    """One load run; once more if the generator itself fell behind (a busy moment on a shared machine)."""
    result = run_load(spec)
    if result.generator_bottleneck:
        first = " ".join(result.warnings)
        result = run_load(spec)
        result.warnings = [f"measured twice; the first run's generator was disturbed: {first}", *result.warnings]
    return result


def _shares(result) -> dict[str, float]:
    total = sum(g.count for name, g in result.replicas.items() if name.startswith("app-"))
    return {name: g.count / total for name, g in sorted(result.replicas.items())
            if name.startswith("app-") and total}


def ask_once(url: str, path: str, source: str | None = None) -> str:
    """One GET on a fresh connection (from `source`, an address on this machine): the replica that answered.
    From `source` it says so in X-Forwarded-For, as the load generator does (for nginx behind Docker's proxy)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path, headers=forwarded_for(source) if source else {})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("X-Replica") or f"HTTP {resp.status}"
    finally:
        conn.close()


# -- 1. round-robin vs least connections on short and long requests ----------------------

def short_and_long(long_ratio: float = 0.1, short_ms: float = SHORT_MS, long_ms: float = LONG_MS) -> RequestMix:
    """Mostly short requests, some long ones; each URI carries a key, so URI hashing has something to spread."""
    return RequestMix((Request("GET", WORK.format(ms=short_ms) + "&u={key}", 1 - long_ratio, name="short"),
                       Request("GET", WORK.format(ms=long_ms) + "&u={key}", long_ratio, name="long")),
                      Keys("uniform", 1000))


@experiment(each_run=True)
def short_long_by_strategy(stack, strategies=("round_robin", "least_conn"), rate: float = 150,
                           seconds: float = 8.0, concurrency: int = 4, replicas: int = 4,
                           long_ratio: float = 0.1, progress=None) -> pd.DataFrame:
    """The same seeded stream of short (5 ms) and long (500 ms) requests under each strategy.

    Open loop, Poisson arrivals; each replica works on `concurrency` requests at once.
    One row per strategy: p50/p99 of the short requests, p99 of the long ones, shares.
    """
    rows = []
    for strategy in strategies:
        stack.apply(strategy=strategy, replicas=replicas, concurrency=concurrency, weights=None)
        spec = LoadSpec(url=entry_url(stack), mode="open", rate=rate, duration_s=seconds,
                        mix=short_and_long(long_ratio), connections=256, seed=3, timeout_s=10)
        result = _measure(spec)
        short = result.requests["short"].latency.summary()
        long = result.requests["long"].latency.summary()
        shares = _shares(result)
        rows.append({"strategy": strategy, "short_p50_ms": short["p50_ms"], "short_p99_ms": short["p99_ms"],
                     "long_p99_ms": long["p99_ms"], "requests": result.responses, "errors": result.error_count,
                     "max_share": max(shares.values()) if shares else float("nan"),
                     "min_share": min(shares.values()) if shares else float("nan"),
                     "generator_bottleneck": result.generator_bottleneck})
        if progress:
            progress(f"{strategy}: short requests p99 {short['p99_ms']:.1f} ms")
    return pd.DataFrame(rows).set_index("strategy")


# -- 2. the article's upstream block --------------------------------------------------------

ARTICLE_BLOCK = {"replicas": 3, "strategy": "least_conn", "weights": (3, 1, 1), "keepalive": 32}


@experiment
def shares_by_replica(stack, rate: float = 200, seconds: float = 3.0, service_ms: float = 10,
                      progress=None, **changes) -> pd.DataFrame:
    """Apply `changes`, send Poisson load, count requests per replica at the replicas.

    Counted twice: by the X-Replica header of every response, and by each
    replica's own request counter (/metrics, before and after).
    """
    if changes:
        stack.apply(**changes)
    before = {name: m["by_route"].get("work", 0) for name, m in replica_metrics(stack).items()}
    spec = LoadSpec(url=entry_url(stack), mode="open", rate=rate, duration_s=seconds,
                    path=WORK.format(ms=service_ms), connections=128, seed=5)
    result = _measure(spec)
    after = {name: m["by_route"].get("work", 0) for name, m in replica_metrics(stack).items()}
    counted = {name: after[name] - before.get(name, 0) for name in after}
    total = sum(counted.values()) or 1
    topology = stack.applied()
    weights = topology.balancer.weight_list(topology.app.replicas)
    frame = pd.DataFrame({
        "weight": pd.Series({f"app-{i}": w for i, w in enumerate(weights, start=1)}),
        "weight_share": pd.Series({f"app-{i}": w / sum(weights) for i, w in enumerate(weights, start=1)}),
        "requests": pd.Series(counted),
        "share": pd.Series({n: c / total for n, c in counted.items()}),
        "share_by_header": pd.Series(_shares(result)),
    }).fillna(0.0)
    frame.index.name = "replica"
    frame.attrs.update(errors=result.error_count, p99_ms=result.latency_ms()["p99_ms"])
    if progress:
        progress(f"{total} requests: " + ", ".join(f"{n} {s:.0%}" for n, s in frame["share"].items()))
    return frame


@experiment
def shares_by_concurrency(stack, concurrencies=(1, 8, 36), seconds: float = 2.0, service_ms: float = 10,
                          progress=None, **changes) -> pd.DataFrame:
    """Apply `changes`, then a closed loop at each number of concurrent clients: each replica's share.

    One row per concurrency, one column per replica (share of requests, from X-Replica).
    """
    if changes:
        stack.apply(**changes)
    rows = []
    for clients in concurrencies:
        spec = LoadSpec(url=entry_url(stack), mode="closed", connections=clients, duration_s=seconds,
                        path=WORK.format(ms=service_ms))
        result = _measure(spec)
        rows.append({"clients": clients, **_shares(result), "throughput_rps": result.throughput_rps,
                     "errors": result.error_count})
        if progress:
            progress(f"{clients} clients: " + ", ".join(f"{n} {v:.0%}" for n, v in _shares(result).items()))
    return pd.DataFrame(rows).set_index("clients").fillna(0.0)


def sequence(stack, n: int = 20, path: str = WORK.format(ms=0)) -> list[str]:
    """`n` requests one after another (nothing in flight): the replica that served each, in order."""
    url = entry_url(stack)
    return [ask_once(url, path) for _ in range(n)]


# -- 3. ip_hash: sticky clients, and what happens when a replica joins ----------------------

def clients_to_replicas(stack, clients, path: str = WORK.format(ms=0), repeat: int = 3) -> dict[str, str]:
    """{client address: replica} as nginx routes it; each client asks `repeat` times (stickiness)."""
    url = entry_url(stack)
    mapping = {}
    for client in clients:
        seen = {ask_once(url, path, source=client) for _ in range(repeat)}
        mapping[client] = seen.pop() if len(seen) == 1 else "several: " + ", ".join(sorted(seen))
    return mapping


@experiment
def ip_hash_load(stack, clients=THREE_CLIENTS, seconds: float = 2.0, service_ms: float = 10,
                 replicas: int = 4) -> pd.DataFrame:
    """Closed-loop load from a few clients (2 connections each) under ip_hash: each replica's share.
    attrs["nginx_saw"]: the client addresses nginx logged for the run (asked, not assumed: behind a
    port proxy it would see one)."""
    stack.apply(strategy="ip_hash", replicas=replicas, weights=None)
    spec = LoadSpec(url=entry_url(stack), mode="closed", connections=2 * len(clients), duration_s=seconds,
                    path=WORK.format(ms=service_ms), source_addresses=tuple(clients))
    began = time.time()
    result = _measure(spec)
    shares = _shares(result)
    frame = pd.DataFrame({"share": pd.Series({f"app-{i}": shares.get(f"app-{i}", 0.0)
                                              for i in range(1, replicas + 1)})})
    frame["clients"] = pd.Series(Counter(clients_to_replicas(stack, clients, repeat=1).values()))
    frame["clients"] = frame["clients"].fillna(0).astype(int)
    frame.index.name = "replica"
    frame.attrs["nginx_saw"] = sorted(set(read_access_log(stack, began)["remote"]))
    return frame


def networks(count: int, start: int = 1) -> list[str]:
    """`count` client addresses, each in its own /24 network: 127.0.1.1, 127.0.2.1, ..."""
    return [f"127.0.{n}.1" for n in range(start, start + count)]


@experiment
def moved_when_a_replica_joins(stack, keys: int = 40, replicas: int = 4) -> pd.DataFrame:
    """Which replica serves each key with `replicas` and with one more, for ip_hash (key = the client's
    network) and for `hash $request_uri consistent` (key = the URI). One row per strategy."""
    clients = networks(keys)
    uris = [f"/work?kind=io&ms=0&client={n}" for n in range(1, keys + 1)]
    rows = []
    for strategy in ("ip_hash", "consistent_hash"):
        maps = []
        for n in (replicas, replicas + 1):
            stack.apply(strategy=strategy, replicas=n, weights=None)
            if strategy == "ip_hash":
                maps.append(clients_to_replicas(stack, clients, repeat=1))
            else:
                url = entry_url(stack)
                maps.append({uri: ask_once(url, uri) for uri in uris})
        moved = sum(maps[0][k] != maps[1][k] for k in maps[0])
        rows.append({"strategy": strategy, "keys": keys, "moved": moved, "moved_share": moved / keys,
                     "ideal_share": 1 / (replicas + 1)})
    stack.apply(replicas=replicas)
    return pd.DataFrame(rows).set_index("strategy")


# -- 4. keepalive: connections nginx opens to the replicas ----------------------------------

@experiment
def keepalive_cost(stack, settings=(32, 0), seconds: float = 2.0, connections: int = 8,
                   path: str = WORK.format(ms=0), progress=None) -> pd.DataFrame:
    """Closed loop through nginx with upstream keepalive on and off.

    New upstream connections are counted by the replicas themselves (each counts
    the distinct peer address:port its requests came from); latency by the generator.
    """
    rows = []
    for keepalive in settings:
        stack.apply(keepalive=keepalive)
        time.sleep(0.3)      # the old nginx worker lets its kept connections go
        before = {n: m["connections"]["opened"] for n, m in replica_metrics(stack).items()}
        spec = LoadSpec(url=entry_url(stack), mode="closed", connections=connections, duration_s=seconds,
                        path=path)
        result = _measure(spec)
        after = {n: m["connections"]["opened"] for n, m in replica_metrics(stack).items()}
        opened = sum(after[n] - before.get(n, 0) for n in after)
        lat = result.latency_ms()
        rows.append({"keepalive": keepalive, "requests": result.responses,
                     "throughput_rps": result.throughput_rps, "new_connections": opened,
                     "new_connections_per_s": opened / result.elapsed_s,
                     "connections_per_request": opened / max(1, result.responses),
                     "mean_ms": lat["mean_ms"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
                     "errors": result.error_count})
        if progress:
            progress(f"keepalive {keepalive}: {opened} new connections for {result.responses} requests")
    stack.apply(keepalive=32)
    return pd.DataFrame(rows).set_index("keepalive")


def dashboard_load(stack, rate: float = 120, long_ratio: float = 0.05, seconds: float = 600) -> LoadSpec:
    """The lesson's dashboard load: Poisson arrivals of mostly short and a few long requests."""
    return LoadSpec(url=entry_url(stack), mode="open", rate=rate, duration_s=seconds,
                    mix=short_and_long(long_ratio), connections=256, timeout_s=10)


async def shares_after(dash, seconds: float = 2.0, window_s: float = 1.0) -> dict[str, float]:
    """Once the dashboard's pending changes are applied and `seconds` have passed: each replica's
    mean share over the last `window_s` of samples (as the share chart draws them)."""
    import asyncio
    await dash.settle()
    await asyncio.sleep(seconds)
    run = dash.run_now
    recent = [s for s in run.samples if s.t >= run.samples[-1].t - window_s]
    return {name: sum(s.replicas[name].share for s in recent if name in s.replicas) / len(recent)
            for name in recent[-1].replicas}


# -- 5. passive health checks: a replica dies under load -----------------------------------

HEALTH_SCENARIOS = {
    "no health check": {"max_fails": 0, "next_upstream": ("off",)},
    "max_fails=1": {"max_fails": 1, "next_upstream": ("off",)},
    "max_fails=1 + retry": {"max_fails": 1, "next_upstream": ("error", "timeout")},
}


@experiment
def replica_dies(stack, scenarios=None, victim: str = "app-2", rate: float = 200, seconds: float = 3.0,
                 kill_at_s: float = 1.0, service_ms: float = 20, strategy: str = "round_robin",
                 progress=None) -> pd.DataFrame:
    """Open loop; `victim` is killed (stack.fault.kill) `kill_at_s` into each run, then restarted.

    One row per scenario: requests sent after the kill, how many failed, and how
    many the dead replica had answered before it died.
    """
    scenarios = scenarios or HEALTH_SCENARIOS
    rows = []
    for label, changes in scenarios.items():
        stack.apply(replicas=4, strategy=strategy, weights=None, fail_timeout_s=10, **changes)
        spec = LoadSpec(url=entry_url(stack), mode="open", rate=rate, duration_s=seconds,
                        path=WORK.format(ms=service_ms), connections=256, seed=11)
        killer = threading.Timer(kill_at_s, lambda: fault.kill(victim, stack=stack))
        killer.start()
        try:
            result = run_load(spec)
        finally:
            killer.join()
        frame = result.intervals_dataframe()
        after = frame[frame.index > kill_at_s]
        errors_after = int(after[[c for c in after.columns if c.startswith("err_")]].sum().sum())
        rows.append({"scenario": label, "sent": result.sent, "sent_after_kill": int(after["sent"].sum()),
                     "failed": result.error_count, "failed_after_kill": errors_after,
                     "failed_share_after_kill": errors_after / max(1, int(after["completed"].sum())),
                     "victim_answered": result.replicas.get(victim).count if victim in result.replicas else 0,
                     "p99_ms": result.latency_ms()["p99_ms"]})
        stack.up(stack.applied(), progress=None)     # the reconciler restarts the killed replica
        if progress:
            progress(f"{label}: {result.error_count} of {result.sent} requests failed")
    stack.apply(max_fails=1, next_upstream=("error", "timeout"), strategy="least_conn")
    return pd.DataFrame(rows).set_index("scenario")
