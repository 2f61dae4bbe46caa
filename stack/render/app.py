"""The file every app replica reads (stack.app.config.AppConfig), for any addressing."""
from __future__ import annotations

from psycopg.conninfo import make_conninfo

from ..app.config import replica_lag_bound_s
from ..shardmap import ShardMap
from ..topology import Topology
from .addressing import Addressing
from .pgbouncer import DATABASE


def _dsn(at: Addressing, service: str, password: str) -> str:
    host, port = at.of(service)
    return make_conninfo(host=host, port=port, user="app", password=password, dbname=DATABASE)


def shard_config(topology: Topology, secrets: dict, at: Addressing, read=None, write=None) -> dict | None:
    """The replicas' shard routing: the map reads use, the maps writes go to (two while users
    move), and a DSN per shard server either map names. Default: the topology's own map."""
    from ..plan import shard_routing     # noqa: PLC0415 - stack.plan imports stack.app, not render
    if read is None and write is None:
        read = topology.postgres.shard_map()
    routing = shard_routing(read, write)
    if routing is None:
        return None
    count = max([read.count, *[m.count for m in (write or [])]])
    routing["dsns"] = {str(i): _dsn(at, f"postgres-shard-{i}", secrets["app_password"])
                       for i in range(1, count + 1)}
    return routing


def app_config(topology: Topology, secrets: dict, at: Addressing, shards="topology") -> dict:
    """`shards`: the shard routing to write (shard_config(...)), default the topology's own."""
    app = topology.app
    via_pgbouncer = topology.pgbouncer.enabled
    password = secrets["app_password"]
    redis_host, redis_port = at.of("redis")
    return {
        "ttl_s": topology.cache.ttl_s, "write_pool": app.write_pool, "read_pool": app.read_pool,
        "pool_timeout_s": app.pool_timeout_s, "pool_idle_s": app.pool_idle_s,
        "read_from": app.read_from, "concurrency": app.concurrency,
        "write_dsn": _dsn(at, "pgbouncer" if via_pgbouncer else "postgres-primary", password),
        "primary_dsn": _dsn(at, "postgres-primary", password),
        "replica_dsn": _dsn(at, "postgres-replica", password),
        "redis_url": f"redis://:{secrets['redis_password']}@{redis_host}:{redis_port}/0",
        "admin_token": secrets["admin_token"], "via_pgbouncer": via_pgbouncer,
        "replica_lag_bound_s": replica_lag_bound_s(topology),
        # Where /users lives when sharded (stack.shardmap); None: on the primary.
        "shards": shard_config(topology, secrets, at) if shards == "topology" else shards,
    }


def routing_as_move_starts(topology: Topology, secrets: dict, at: Addressing, move) -> dict | str | None:
    """The app config's shard routing when `move` (stack.plan's RESHARD action, or None) is about to
    run: while users move, replicas (new ones too) route by the map the move starts from (None: the
    users are on the primary); without a move, "topology" (the topology's own map)."""
    if move is None:
        return "topology"
    before = ShardMap.from_dict(move.expect["from"])
    return shard_config(topology, secrets, at, before) if before else None


def routing_for_phase(topology: Topology, secrets: dict, at: Addressing, read, write) -> tuple[dict | None, dict]:
    """One phase of a move (stack.resharding: copy, flip, done): the app config's routing (None: the
    users are on the primary) and what each replica then reports ({"shards": ...}) once it took it."""
    from ..plan import shard_routing     # noqa: PLC0415 - as in shard_config
    routing = shard_config(topology, secrets, at, read, write) if read else None
    return routing, {"shards": shard_routing(read, write)}
