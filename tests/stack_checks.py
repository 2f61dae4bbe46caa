"""Integration checks that hold for every backend (processes or containers).

Each takes the stack, its Ports and `snapshot(stack)`: what identifies the running
services (pids for processes, container ids for Docker), so "nothing restarted"
and "the stack is unchanged" mean the same on both.
"""
from __future__ import annotations

import socket
import time
from collections import Counter

import psycopg
import pytest

from conftest import request
from stack.errors import PortInUseError, StackError, TopologyError
from stack import clients, resharding
from stack.docker.volumes import SECRETS_LABEL, secrets_mark
from stack.topology import Topology


def replica_name_of_user(stack, ports, user_id: int) -> str:
    with psycopg.connect(clients.dsn(stack.context(), "standby")) as conn:
        return conn.execute("SELECT name FROM users WHERE id = %s", (user_id,)).fetchone()[0]


def requests_reach_every_replica(ports, replicas: int = 4) -> None:
    seen = Counter(request(ports.nginx, "GET", "/health")[1]["x-replica"] for _ in range(10 * replicas))
    assert set(seen) == {f"app-{i}" for i in range(1, replicas + 1)}, seen


def row_written_on_primary_appears_on_replica(stack, ports) -> None:
    status, _, user = request(ports.nginx, "POST", "/users", {"name": "Ada", "email": f"ada{time.time()}@x.io"})
    assert status == 201
    ctx = stack.context()
    deadline = time.monotonic() + 2
    with psycopg.connect(clients.dsn(ctx, "standby")) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM users WHERE id = %s", (user["id"],)).fetchone():
                break
            time.sleep(0.005)
        else:
            pytest.fail("row never reached the replica")
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    assert clients.replication_status(ctx)["state"] == "streaming"


def remote_apply_gives_read_your_writes(stack, ports) -> None:
    stack.apply(synchronous_commit="remote_apply")
    try:
        ctx = stack.context()
        with psycopg.connect(clients.dsn(ctx, "standby")) as replica:
            for i in range(20):
                name = f"sync-{i}"
                assert request(ports.nginx, "PUT", "/users/8", {"name": name})[0] == 200
                assert replica.execute("SELECT name FROM users WHERE id = 8").fetchone()[0] == name
        assert clients.replication_status(ctx)["sync_state"] == "sync"
    finally:
        stack.apply(synchronous_commit="on")


def up_twice_changes_nothing(stack, snapshot) -> None:
    before = snapshot(stack)
    assert stack.up() == []
    assert stack.up(stack.applied()) == []
    assert snapshot(stack) == before


def weights_shape_the_split(stack, ports) -> None:
    stack.apply(strategy="round_robin", weights=(1, 1, 1, 5))
    try:
        seen = Counter(request(ports.nginx, "GET", "/health")[1]["x-replica"] for _ in range(80))
        assert seen["app-4"] == 50 and seen["app-1"] == 10, seen
    finally:
        stack.apply(strategy="least_conn", weights=None)


BAD_INPUT = [({"replicas": 0}, "app.replicas"), ({"replicas": -1}, "app.replicas"),
             ({"replicas": 100}, "app.replicas"), ({"strategy": "foo"}, "balancer.strategy"),
             ({"weights": (1, 0, 1, 1)}, "balancer.weights[1]")]


def bad_input_is_refused(stack, snapshot, changes: dict, field: str) -> None:
    before, topology = snapshot(stack), stack.applied()
    with pytest.raises(TopologyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        stack.apply(**changes)
    assert snapshot(stack) == before and stack.applied() == topology


def port_in_use_is_refused(stack, ports, snapshot) -> None:
    before, topology = snapshot(stack), stack.applied()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as servers do: TIME_WAIT is no obstacle
    blocker.bind(("127.0.0.1", ports.app(5)))
    blocker.listen()
    try:
        with pytest.raises(PortInUseError, match=f"port {ports.app(5)} \\(app-5\\).*base_port"):
            stack.apply(replicas=5)
    finally:
        blocker.close()
    assert snapshot(stack) == before and stack.applied() == topology


def ttl_change_reaches_every_replica(stack, ports, snapshot, apply=None) -> None:
    """A TTL change is a config push: nothing restarts, and every replica caches with it."""
    apply = apply or stack.apply
    cache = clients.redis_client(stack.context())
    before = snapshot(stack)
    done = apply(ttl_s=2)
    assert done == ["pushed app config (ttl, pools, concurrency, read target) to running replicas"]
    assert snapshot(stack) == before
    for _ in range(8):               # requests spread over the replicas: each must use the new TTL
        cache.delete("user:300")
        assert request(ports.nginx, "GET", "/users/300")[0] == 200
        assert 0 < cache.ttl("user:300") <= 2
    stack.apply(ttl_s=300)
    cache.delete("user:301")
    request(ports.nginx, "GET", "/users/301")
    assert cache.ttl("user:301") > 250


# -- shard servers ----------------------------------------------------------------------------
def shard_servers_are_primaries_with_own_volumes(stack, count: int, volumes: set, prefix: str) -> None:
    """Each shard server, asked, is a primary of its own (not a standby of anything), and keeps its
    data in a volume of its own (`volumes`: the engine's names, `prefix`: the project or stack)."""
    for i in range(1, count + 1):
        with clients.connect(stack.context(), f"shard-{i}") as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False, f"shard-{i}"
        assert f"{prefix}_shard-{i}-data" in volumes, (i, volumes)


def shards_took_the_rows_live(stack, containers, before: dict, shard_map, users: int) -> None:
    """Nothing that ran `before` was replaced (the app took the new routing live), and each shard
    server, asked, holds its rows: every row at its home, none on two, none missing."""
    assert {k: v for k, v in containers(stack).items() if k in before} == before
    held = every_row_at_home(stack, shard_map, users)
    assert all(held[i] for i in range(1, shard_map.count + 1)), {i: len(ids) for i, ids in held.items()}


def every_row_at_home(stack, shard_map, total: int | None = None) -> dict:
    """Each shard server asked for its rows: every row on its home, none on two servers, none missing."""
    held = resharding.ids_by_shard(stack.context(), shard_map.count)
    seen = Counter(i for ids in held.values() for i in ids)
    assert not [i for i, n in seen.items() if n > 1], "a user on two shard servers"
    assert resharding.misplaced(stack.context(), shard_map) == []
    if total is not None:
        assert len(seen) == total, (len(seen), total)
    return held


def requests_route_by_the_map(ports, shard_map, user_ids=(1, 42, 777, 9999)) -> None:
    """Writes and reads through nginx land on each user's home server, which the app names (X-Shard).
    The write invalidates the user's cached copy, so the read after it is answered by a server."""
    for user_id in user_ids:
        home = f"shard-{shard_map.home(user_id)}"
        status, headers, body = request(ports.nginx, "PUT", f"/users/{user_id}", {"name": f"routed-{user_id}"})
        assert status == 200 and headers["x-shard"] == home, (user_id, status, headers)
        status, headers, body = request(ports.nginx, "GET", f"/users/{user_id}")
        assert status == 200 and body["id"] == user_id and body["name"] == f"routed-{user_id}"
        assert headers["x-shard"] == home, (user_id, headers)
    status, headers, body = request(ports.nginx, "GET", "/users?region=eu")
    assert status == 200 and headers["x-shard"] == f"all({shard_map.count})", headers


def data_volumes_carry_this_states_mark(stack, engine, label: str) -> None:
    """Every data volume the stack made (`label`: how its backend labels them) names the passwords
    it was initialised with (a hash)."""
    volumes = engine.volumes.list(filters={"label": label})
    assert volumes, f"the stack made no data volume labelled {label}"
    mark = secrets_mark(stack.state.secrets())
    assert {v.name: (v.attrs.get("Labels") or {}).get(SECRETS_LABEL) for v in volumes} == \
        {v.name: mark for v in volumes}


def foreign_data_volume_is_refused(new_stack, engine, base: int, maker_labels: dict, made_by: str) -> None:
    """A data volume of the name `new_stack` needs, made by another stack (the other backend, or a
    state directory since deleted): `up` refuses it by name before anything starts."""
    project = f"scalelab-{base}"
    name = f"{project}_primary-data"
    swarm_before = engine.info()["Swarm"].get("LocalNodeState")
    volume = engine.volumes.create(name, labels=maker_labels)
    try:
        with pytest.raises(StackError) as refused:
            new_stack.up(Topology(base_port=base))
        message = str(refused.value)
        assert f"{name} ({made_by})" in message and "Nothing was changed" in message, message
        assert f"docker volume rm {name}" in message, message
        assert [c.name for c in engine.containers.list(all=True) if c.name.startswith(project)] == []
        assert sorted(v.name for v in engine.volumes.list() if v.name.startswith(project)) == [name]
        assert engine.info()["Swarm"].get("LocalNodeState") == swarm_before, "the engine's swarm mode changed"
        assert not new_stack.state.load().get("up")
    finally:
        volume.remove(force=True)
