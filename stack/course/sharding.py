"""Lesson 6's experiments: users split over real PostgreSQL shard servers.

Every function changes the live stack through stack.apply(...), measures, and returns a
DataFrame (or a dict) of what the servers and replicas reported:
- rows per shard are counted on each shard server (stack.resharding.ids_by_shard);
- requests per shard are the statements each app replica sent to each shard server
  (its /metrics `by_shard`), summed over replicas;
- keys moved are the user ids found on a different server after a reshard than before.
"""
from __future__ import annotations

import time

import pandas as pd
import psycopg

from .. import clients, resharding
from ..load import Keys, LoadSpec, Request, RequestMix, run_load
from ..shardmap import REGIONS, SCHEMES, ShardMap, moved_fraction
from . import readings
from .predictions import experiment




def _load(stack, path: str, seconds: float, connections: int, keys: str | None = None, seed: int = 6):
    """A closed-loop run; measured again once if the generator itself fell behind."""
    mix = RequestMix((Request("GET", path),), Keys(keys, 10_000)) if keys else None
    spec = LoadSpec(url=stack.status()["url"], mode="closed", connections=connections, duration_s=seconds,
                    mix=mix, path=path, seed=seed)
    result = run_load(spec)
    return run_load(spec) if result.generator_bottleneck else result


def shard_statements(stack) -> dict[str, int]:
    """{"shard-N": statements sent to it so far}, summed over every running app replica."""
    total: dict[str, int] = {}
    for m in readings.replica_metrics(stack).values():
        for shard, n in m.get("by_shard", {}).items():
            total[shard] = total.get(shard, 0) + n
    return total


def _delta(before: dict, after: dict, count: int) -> list[int]:
    return [after.get(f"shard-{i}", 0) - before.get(f"shard-{i}", 0) for i in range(1, count + 1)]


def rows_per_shard(stack) -> pd.Series:
    count = stack.applied().postgres.shards
    held = resharding.ids_by_shard(stack, count)
    return pd.Series({f"shard-{s}": len(ids) for s, ids in held.items()}, name="rows")


@experiment
def distribution(stack, scheme: str = "consistent", shards: int = 4, seconds: float = 1.5,
                 connections: int = 8) -> pd.DataFrame:
    """Rows per shard (asked of each server) and the share of requests each shard served, for user
    reads by id with uniform keys and with Zipf keys (a few users get most of the traffic)."""
    stack.apply(shards=shards, shard_scheme=scheme)
    table = pd.DataFrame({"rows": rows_per_shard(stack)})
    for keys in ("uniform", "zipf"):
        before = shard_statements(stack)
        result = _load(stack, "/users/{key}", seconds, connections, keys=keys)
        served = _delta(before, shard_statements(stack), shards)
        table[f"{keys}_share"] = [n / max(1, sum(served)) for n in served]
        table[f"{keys}_errors"] = result.error_count
    table.index.name = "shard"
    table.attrs["scheme"] = scheme
    return table


@experiment
def region_traffic(stack, region: str = "eu", shards: int = 4, seconds: float = 1.5,
                   connections: int = 4) -> pd.DataFrame:
    """One busy region (GET /users?region=...) with the shard key user id vs region: which shards
    do the work, and what each query costs."""
    rows = []
    for scheme, key in (("consistent", "user id"), ("directory", "region")):
        stack.apply(shards=shards, shard_scheme=scheme)
        before = shard_statements(stack)
        result = _load(stack, f"/users?region={region}", seconds, connections)
        served = _delta(before, shard_statements(stack), shards)
        lat = result.latency_ms()
        rows.append({"shard key": key, "scheme": scheme, "queries_rps": result.throughput_rps,
                     "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "errors": result.error_count,
                     "shards_busy": sum(1 for n in served if n > 0),
                     "busiest_share": max(served) / max(1, sum(served)),
                     **{f"shard-{i}": n for i, n in enumerate(served, start=1)}})
    return pd.DataFrame(rows).set_index("shard key")


def predicted_moved(scheme: str, n: int) -> float:
    """The textbook share of keys that move from n to n + 1 shards."""
    return n / (n + 1) if scheme == "modulo" else 1 / (n + 1)


@experiment
def keys_moved(stack, schemes=("modulo", "consistent", "jump"), n: int = 4) -> pd.DataFrame:
    """Reshard n -> n + 1 with each scheme on the live stack; count on the servers which users changed server."""
    rows = []
    for scheme in schemes:
        stack.apply(shards=n, shard_scheme=scheme)
        before = resharding.ids_by_shard(stack, n)
        where_before = {i: s for s, ids in before.items() for i in ids}
        started = time.perf_counter()
        stack.apply(shards=n + 1)
        took = time.perf_counter() - started
        after = resharding.ids_by_shard(stack, n + 1)
        where_after = {i: s for s, ids in after.items() for i in ids}
        moved = sum(1 for i, s in where_after.items() if where_before.get(i) != s)
        report = stack.status().get("resharding") or {}
        rows.append({"scheme": scheme, "predicted_share": predicted_moved(scheme, n),
                     "map_share": moved_fraction(ShardMap(scheme, n), ShardMap(scheme, n + 1), sorted(where_before)),
                     "measured_share": moved / len(where_before), "rows_moved": moved,
                     "rows_total": len(where_after), "lost": len(set(where_before) - set(where_after)),
                     "mover_rows_per_s": report.get("rows_per_s"), "apply_s": took})
    return pd.DataFrame(rows).set_index("scheme")


@experiment
def fanout_cost(stack, shard_counts=(2, 4, 8), seconds: float = 1.2, connections: int = 4) -> pd.DataFrame:
    """Latency of a point read (one shard) and of a region list that must ask every shard, by shard count."""
    rows = []
    for n in shard_counts:
        stack.apply(shards=n, shard_scheme="consistent")
        for label, path in (("by id (one shard)", "/users/{key}"),
                            ("by region, count only (every shard)", "/users?region=eu&ids=false")):
            result = _load(stack, path, seconds, connections, keys="uniform" if "{key}" in path else None)
            lat = result.latency_ms()
            rows.append({"shards": n, "query": label, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
                         "rps": result.throughput_rps, "errors": result.error_count})
    return pd.DataFrame(rows).set_index(["query", "shards"]).sort_index()


# -- PostgreSQL's own way: a coordinator with postgres_fdw ------------------------------------------

def _coordinator_sql(stack, count: int) -> list[str]:
    ctx = clients.access(stack)
    statements = ["CREATE EXTENSION IF NOT EXISTS postgres_fdw", "DROP SCHEMA IF EXISTS coord CASCADE",
                  "CREATE SCHEMA coord",
                  "CREATE TABLE coord.users (id integer NOT NULL, name text, email text, region text, "
                  "updated_at timestamptz) PARTITION BY HASH (id)"]
    for i in range(1, count + 1):
        host, port = clients.peer_address(ctx, f"postgres-shard-{i}")     # as the primary reaches it
        statements += [
            f"DROP SERVER IF EXISTS coord_shard_{i} CASCADE",
            f"CREATE SERVER coord_shard_{i} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '{host}', "
            f"port '{port}', dbname 'scalelab', async_capable 'true', batch_size '1000')",
            f"CREATE USER MAPPING FOR postgres SERVER coord_shard_{i} OPTIONS (user 'app', "
            f"password '{ctx.secrets['app_password']}')",
            f"CREATE FOREIGN TABLE coord.users_{i} PARTITION OF coord.users FOR VALUES WITH "
            f"(MODULUS {count}, REMAINDER {i - 1}) SERVER coord_shard_{i} OPTIONS (schema_name 'public', table_name 'users_coord')"]
    return statements


def _timed(conn, query: str, params: tuple, repeat: int) -> float:
    """Median milliseconds of one query, run `repeat` times on one connection."""
    times = []
    for k in range(repeat):
        start = time.perf_counter()
        conn.execute(query, tuple(p(k) if callable(p) else p for p in params)).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


@experiment
def coordinator(stack, shards: int = 4, repeat: int = 200) -> dict:
    """A hash-partitioned table on the primary whose partitions are postgres_fdw foreign tables on the
    shard servers (PostgreSQL routes by its own hash of id). Compared with the app's own routing
    (one query straight to the shard that holds the row), and what SQL still works."""
    stack.apply(shards=shards, shard_scheme="modulo")
    for i in range(1, shards + 1):
        with clients.connect(stack, f"shard-{i}") as conn:
            conn.execute("DROP TABLE IF EXISTS users_coord")
            conn.execute("CREATE TABLE users_coord (id integer PRIMARY KEY, name text, email text, region text, "
                         "updated_at timestamptz)")
            conn.execute("ALTER TABLE users_coord OWNER TO app")
    out: dict = {}
    with clients.connect(stack, "primary") as conn:
        for statement in _coordinator_sql(stack, shards):
            conn.execute(statement)
        started = time.perf_counter()
        conn.execute("INSERT INTO coord.users SELECT id, name, email, region, updated_at FROM public.users")
        out["load_s"] = time.perf_counter() - started
        out["rows_via_coordinator"] = conn.execute("SELECT count(*) FROM coord.users").fetchone()[0]
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (COSTS OFF) SELECT * FROM coord.users WHERE id = 42"))
        out["point_plan"] = plan
        ids = lambda k: 1 + (k * 97) % 10_000  # noqa: E731 - a different user each time
        latency = {"coordinator: one user by id": _timed(conn, "SELECT * FROM coord.users WHERE id = %s", (ids,), repeat),
                   "coordinator: count per region (every shard)": _timed(
                       conn, "SELECT region, count(*) FROM coord.users GROUP BY region", (), max(20, repeat // 10))}
        # What the SQL of one database no longer promises:
        try:
            conn.execute("CREATE UNIQUE INDEX ON coord.users (email)")
            out["unique_email"] = "created"
        except psycopg.Error as exc:
            out["unique_email"] = f"refused: {str(exc).strip().splitlines()[0]}"
        out["join_rows"] = conn.execute(
            "SELECT count(*) FROM coord.users c JOIN public.users p ON p.id = c.id AND p.region = c.region").fetchone()[0]
        a, b = 1, next(i for i in range(2, 100) if _partition(conn, i) != _partition(conn, 1))
        with conn.transaction():
            conn.execute("UPDATE coord.users SET name = name || '' WHERE id IN (%s, %s)", (a, b))
        out["cross_shard_transaction"] = (f"users {a} and {b} (partitions {_partition(conn, a)} and "
                                          f"{_partition(conn, b)}) updated in one transaction: committed on "
                                          f"each shard in turn (postgres_fdw has no two-phase commit)")
    m = ShardMap("modulo", shards)
    with clients.connect(stack, f"shard-{m.home(42)}") as direct:
        latency["app routing: one user by id, straight to its shard"] = _timed(
            direct, "SELECT * FROM users WHERE id = 42", (), repeat)
    out["latency_ms"] = pd.Series(latency, name="median ms")
    return out


def _partition(conn, user_id: int) -> str:
    return conn.execute("SELECT tableoid::regclass::text FROM coord.users WHERE id = %s", (user_id,)).fetchone()[0]


def drop_coordinator(stack, shards: int) -> None:
    with clients.connect(stack, "primary") as conn:
        conn.execute("DROP SCHEMA IF EXISTS coord CASCADE")
        for i in range(1, shards + 1):
            conn.execute(f"DROP SERVER IF EXISTS coord_shard_{i} CASCADE")
    for i in range(1, shards + 1):
        with clients.connect(stack, f"shard-{i}") as conn:
            conn.execute("DROP TABLE IF EXISTS users_coord")


# -- the live control -------------------------------------------------------------------------------

def control(stack):
    """A shard-count slider and a scheme dropdown bound to the live stack, with a bar chart of the
    rows each shard server holds and what the last reshard moved. Returns the widget box; its
    `.apply_now()` applies the controls' values (what a change of either does)."""
    import ipywidgets as widgets
    import plotly.graph_objects as go

    topology = stack.applied()
    count = widgets.IntSlider(value=max(1, topology.postgres.shards), min=1, max=8, description="shards",
                              continuous_update=False)
    scheme = widgets.Dropdown(options=list(SCHEMES), value=topology.postgres.shard_scheme, description="scheme")
    status = widgets.HTML()
    fig = go.FigureWidget()
    fig.add_bar(x=[], y=[], marker_color="#1f77b4")
    fig.update_layout(title="rows on each shard server (asked of each server)", height=320,
                      template="plotly_white", yaxis_title="rows", margin=dict(l=60, r=20, t=50, b=40))

    def refresh():
        rows = rows_per_shard(stack)
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = list(rows.index), list(rows.values)
        report = stack.status().get("resharding") or {}
        status.value = (f"<b>{scheme.value}</b> over <b>{count.value}</b> shards; last move: "
                        f"{report.get('rows_moved', 0)} of {report.get('rows_total', 0)} rows in "
                        f"{report.get('duration_s', 0):.2f} s")

    def apply_now(_change=None):
        try:
            stack.apply(shards=count.value, shard_scheme=scheme.value)
        except Exception as exc:  # noqa: BLE001 - shown to the learner; the stack is unchanged
            status.value = f"<span style='color:#cf222e'>{exc}</span>"
            return
        refresh()

    count.observe(apply_now, names="value")
    scheme.observe(apply_now, names="value")
    box = widgets.VBox([widgets.HBox([count, scheme]), status, fig])
    box.apply_now, box.figure, box.count, box.scheme = apply_now, fig, count, scheme
    refresh()
    return box


__all__ = ["distribution", "region_traffic", "keys_moved", "fanout_cost", "coordinator", "drop_coordinator",
           "control", "rows_per_shard", "shard_statements", "predicted_moved", "REGIONS"]
