"""The Swarm backend against a real engine in Swarm mode: the shared checks, plus what only Swarm has.

Collected only with SCALELAB_DOCKER_TESTS=1 (the Docker tier, `make test-docker`, which starts
its own dockerd with iptables on: host-mode published ports are iptables rules). The engine
is put in Swarm mode by SwarmStack.up() when it is in none, and left again by down().

One stack for the module, on its own block of ports; changed step by step; taken down last.
Timings (up, scale 4 -> 6, strategy change) go to $SCALELAB_SWARM_TIMINGS (JSON) if set.
"""
from __future__ import annotations

import json
from collections import Counter
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

if os.environ.get("SCALELAB_DOCKER_TESTS") != "1":
    pytest.skip("Docker tier not requested (SCALELAB_DOCKER_TESTS=1, `make test-docker`)", allow_module_level=True)

import stack_checks as checks  # noqa: E402
from conftest import Trickle, request  # noqa: E402
from stack import clients, get_stack  # noqa: E402
from docker_tier import FIRST_BASE, Timings, engine, free_base  # noqa: E402,F401 - engine: a fixture
from stack.ports import HOST, Ports, port_is_free  # noqa: E402
from stack.shardmap import ShardMap  # noqa: E402
from stack.swarm.backend import RELOADED_FOR_TASKS, SwarmStack  # noqa: E402
from stack.topology import Topology  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Issue 14's targets, reported met or missed (docker_tier.Timings); the asserts are ceilings
# at twice each target, which only a hang or a regression crosses: a strategy change above 6 s
# would be a config rotation again (~12 s), not the reload in the running nginx.
TIMINGS = Timings(targets={"up_cold_s": 30.0, "scale_4_to_6_s": 10.0, "strategy_s": 3.0})
timed = TIMINGS.timed
CEILING_UP_S, CEILING_SCALE_S, CEILING_STRATEGY_S = 60.0, 20.0, 6.0


# Chosen when the stack starts, not at collection: the compose tests run first and free theirs.
BASE = 0
PORTS = Ports(26400)


@pytest.fixture(scope="module")
def stack(engine, state_dir):
    global BASE, PORTS
    BASE = free_base(FIRST_BASE + 256)
    PORTS = Ports(BASE)
    s = SwarmStack(state_dir)
    s.build(progress=print)           # from built images: the up below is what the learner waits for
    timed("up_cold_s", s.up, Topology(base_port=BASE), progress=print)
    yield s
    s.down(purge=True)
    TIMINGS.save("SCALELAB_SWARM_TIMINGS", "swarm")


def containers(stack) -> dict:
    return {name: info["container"] for name, info in stack.status()["services"].items()}


def service(engine, stack, short: str) -> dict:
    return engine.api.inspect_service(f"{stack.status()['stack']}_{short}")


def running_tasks(engine, stack, short: str) -> int:
    tasks = engine.api.tasks(filters={"service": f"{stack.status()['stack']}_{short}", "desired-state": "running"})
    return sum(t["Status"]["State"] == "running" for t in tasks)


# -- up --------------------------------------------------------------------------------------------
def test_up_deploys_every_service_healthy_quickly(stack, engine):
    assert TIMINGS["up_cold_s"][0] <= CEILING_UP_S, TIMINGS
    assert engine.info()["Swarm"]["LocalNodeState"] == "active"
    services = stack.status()["services"]
    assert set(services) == {"nginx", "redis", "pgbouncer", "postgres-primary", "postgres-replica",
                             "app-1", "app-2", "app-3", "app-4"}, services
    assert all(i["state"] == "running" and i["health"] == "healthy" for i in services.values()), services
    status, _, body = request(PORTS.nginx, "GET", "/users/42")
    assert status == 200 and body["email"] == "user42@example.com"


def test_the_articles_deploy_block_is_what_the_engine_runs(stack, engine):
    spec = service(engine, stack, "app")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 4 and running_tasks(engine, stack, "app") == 4
    assert spec["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 512 * 1024 ** 2
    # The stack file's timings, as the engine took them: an update done 1 s after its last task,
    # a crashed app task restarted after 1 s, a server (its port fixed) after 5 s.
    assert spec["UpdateConfig"]["Monitor"] == 10 ** 9 and spec["TaskTemplate"]["RestartPolicy"]["Delay"] == 10 ** 9
    primary = service(engine, stack, "postgres-primary")["Spec"]
    assert primary["TaskTemplate"]["RestartPolicy"]["Delay"] == 5 * 10 ** 9
    secrets = {s["File"]["Name"] for s in spec["TaskTemplate"]["ContainerSpec"]["Secrets"]}
    assert secrets == {"/run/scalelab/app/config.json"}        # a secret at an absolute path


def test_every_published_port_listens_on_loopback_only(stack, engine):
    """Swarm has no host address for a published port: up() made the swarm on a docker_gwbridge
    whose binding address is 127.0.0.1. Asked of the kernel: what listens at the stack's ports."""
    ports = service(engine, stack, "nginx")["Endpoint"]["Ports"]
    assert [(p["PublishedPort"], p["PublishMode"]) for p in ports] == [(BASE, "host")]
    published = {int(info["address"].rsplit(":", 1)[1]) for info in stack.status()["services"].values()}
    assert len(published) == 9, published              # 4 app tasks and 5 servers
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in published}
    assert {port for _, port in listening} == published, listening
    assert {ip for ip, _ in listening} == {HOST}, listening
    assert "listening" not in stack.status()          # status() warns only when something listens wider


def test_requests_through_nginx_reach_every_replica(stack):
    checks.requests_reach_every_replica(PORTS)


def test_each_app_task_answers_at_the_port_its_engine_picked(stack, engine):
    """One replica at a time (the course asks each for its /metrics): every task has a host-mode
    port the engine chose, which status() reports and the task itself answers on."""
    apps = {n: s for n, s in stack.status()["services"].items() if n.startswith("app-")}
    assert sorted(apps) == [f"app-{i}" for i in range(1, stack.applied().app.replicas + 1)], apps
    reported = {}
    for task in engine.api.tasks(filters={"service": f"{stack.status()['stack']}_app", "desired-state": "running"}):
        reported[f"app-{task['Slot']}"] = task["Status"]["PortStatus"]["Ports"][0]["PublishedPort"]
    for name, info in apps.items():
        assert info["address"] == f"127.0.0.1:{reported[name]}", (name, info, reported)
        assert clients.metrics(stack, int(name.split("-")[1]))["replica"] == name


def test_row_written_on_primary_appears_on_replica(stack):
    checks.row_written_on_primary_appears_on_replica(stack, PORTS)


def test_remote_apply_gives_read_your_writes_immediately(stack):
    checks.remote_apply_gives_read_your_writes(stack, PORTS)


def test_ttl_change_is_pushed_into_every_task_without_a_restart(stack):
    checks.ttl_change_reaches_every_replica(stack, PORTS, containers)


def test_postgres_pgbouncer_and_redis_settings_change_live(stack):
    before = containers(stack)
    done = stack.apply(replica_delay_ms=300, pool_size=7, maxmemory_mb=32)
    assert "reloaded postgres settings (synchronous_commit, replica apply delay)" in done
    assert clients.postgres_settings(stack, "standby", ["recovery_min_apply_delay"]) == {
        "recovery_min_apply_delay": "300"}
    assert clients.pgbouncer_config(stack)["default_pool_size"] == "7"
    assert clients.redis_client(stack).config_get("maxmemory")["maxmemory"] == str(32 * 1024 * 1024)
    stack.apply(replica_delay_ms=0, pool_size=20, maxmemory_mb=64)
    assert containers(stack) == before


def test_data_volumes_carry_the_mark_of_this_states_passwords(stack, engine):
    checks.data_volumes_carry_this_states_mark(stack, engine,
                                               f"com.docker.stack.namespace={stack.state.load()['stack']}")


def test_a_data_volume_another_stack_made_is_refused_before_anything_starts(stack, engine, tmp_path):
    """The docker backend names its volumes as Swarm does: the same base port, another backend's data."""
    base = free_base(BASE + 64)
    project = f"scalelab-{base}"
    checks.foreign_data_volume_is_refused(SwarmStack(tmp_path / "other-state"), engine, base,
                                          {"scalelab.project": project, "com.docker.compose.project": project},
                                          made_by=f"docker backend project {project}")


def test_up_twice_changes_nothing(stack):
    checks.up_twice_changes_nothing(stack, containers)


@pytest.mark.parametrize("changes, field", checks.BAD_INPUT)
def test_bad_input_is_refused_and_the_stack_is_unchanged(stack, changes, field):
    checks.bad_input_is_refused(stack, containers, changes, field)


# -- scale and strategy ------------------------------------------------------------------------------
LOAD_DURING_SCALE: dict = {}


def test_scale_4_to_6_is_a_service_update_under_load(stack, engine):
    before = containers(stack)
    with Trickle(PORTS.nginx) as load:
        done = timed("scale_4_to_6_s", stack.apply, replicas=6)
        time.sleep(0.5)
    LOAD_DURING_SCALE.update(load.outcomes)
    TIMINGS["scale_4_to_6_outcomes"] = {str(k): v for k, v in load.outcomes.items()}
    assert done == ["scaled app to 6 replicas", "reloaded nginx: least_conn over 6 replicas"]
    assert service(engine, stack, "app")["Spec"]["Mode"]["Replicated"]["Replicas"] == 6
    assert running_tasks(engine, stack, "app") == 6
    checks.requests_reach_every_replica(PORTS, 6)
    # Only the count changed: the four tasks that ran go on running (a changed task template,
    # e.g. defaults the engine inserted, would have replaced them all in a rolling update).
    after = containers(stack)
    assert {f"app-{i}": after[f"app-{i}"] for i in range(1, 5)} == {
        f"app-{i}": before[f"app-{i}"] for i in range(1, 5)}, (before, after)


def test_scale_4_to_6_meets_the_target_and_loses_no_request(stack):
    assert LOAD_DURING_SCALE and {k: v for k, v in LOAD_DURING_SCALE.items() if k != 200} == {}, LOAD_DURING_SCALE
    assert TIMINGS["scale_4_to_6_s"][0] <= CEILING_SCALE_S, TIMINGS


def test_strategy_and_weights_change_live_in_the_running_nginx_under_load(stack, engine):
    """No config rotation (it would restart nginx's one task: every request failing for ~10 s):
    the upstream is written into the running task and nginx reloads gracefully."""
    nginx_before = containers(stack)["nginx"]
    with Trickle(PORTS.nginx) as load:
        done = timed("strategy_s", stack.apply, strategy="round_robin", weights=(3, 1, 1, 1, 1, 1))
        time.sleep(0.3)
    assert done == ["reloaded nginx: round_robin over 6 replicas"], done
    assert containers(stack)["nginx"] == nginx_before, "nginx must reload, not restart"
    assert load.outcomes and {k: v for k, v in load.outcomes.items() if k != 200} == {}, load.outcomes
    assert TIMINGS["strategy_s"][0] <= CEILING_STRATEGY_S, TIMINGS
    # Ask the server: sequential requests under weighted round-robin split exactly 3:1:1:1:1:1.
    seen = Counter(request(PORTS.nginx, "GET", "/health")[1]["x-replica"] for _ in range(80))
    assert seen == {"app-1": 30, **{f"app-{i}": 10 for i in range(2, 7)}}, seen
    # Back to 4, under load: the backend signals the two leaving tasks itself once nginx no longer
    # names them (Swarm's agent would wait ~3 s first); no GET may fail meanwhile. (Which tasks get
    # the signal is tested in test_swarm_render.py; here, that signalling early loses nothing.)
    with Trickle(PORTS.nginx) as load:
        timed("scale_6_to_4_s", stack.apply, strategy="least_conn", weights=None, replicas=4)
        time.sleep(0.3)
    TIMINGS["scale_6_to_4_outcomes"] = {str(k): v for k, v in load.outcomes.items()}
    assert load.outcomes and {k: v for k, v in load.outcomes.items() if k != 200} == {}, load.outcomes
    assert TIMINGS["scale_6_to_4_s"][0] <= CEILING_SCALE_S, TIMINGS
    assert running_tasks(engine, stack, "app") == 4
    assert len([c for c in containers(stack) if c.startswith("app-")]) == 4, containers(stack)
    assert len({request(PORTS.nginx, "GET", "/health")[1]["x-replica"] for _ in range(20)}) == 4


def test_cpu_limit_is_a_service_update(stack, engine):
    stack.apply(cpu_quota=0.5)
    try:
        limits = service(engine, stack, "app")["Spec"]["TaskTemplate"]["Resources"]["Limits"]
        assert limits["NanoCPUs"] == 500_000_000
        assert request(PORTS.nginx, "GET", "/users/3")[0] == 200
    finally:
        stack.apply(cpu_quota=None)


# -- shard servers ----------------------------------------------------------------------------------
def primary_users(stack) -> int:
    with clients.connect(stack.context(), "primary") as conn:
        return conn.execute("SELECT count(*) FROM users").fetchone()[0]


def test_shard_servers_are_services_and_every_row_lands_where_the_map_says(stack, engine):
    users = primary_users(stack)
    before = containers(stack)
    done = timed("shards_0_to_2_s", stack.apply, shards=2, shard_scheme="consistent")
    assert "started postgres-shard-1" in done and "started postgres-shard-2" in done, done
    assert any(line.startswith("loaded users into 2 shard(s) (consistent)") for line in done), done
    services = stack.status()["services"]
    for i in (1, 2):
        assert services[f"postgres-shard-{i}"]["state"] == "running", services
        assert services[f"postgres-shard-{i}"]["address"] == f"127.0.0.1:{PORTS.shard(i)}", services
        assert running_tasks(engine, stack, f"postgres-shard-{i}") == 1
    # Nothing else was replaced: the app's tasks took the new routing live (pushed into each one).
    checks.shards_took_the_rows_live(stack, containers, before, ShardMap("consistent", 2), users)
    name = stack.status()["stack"]
    volumes = {v.name for v in engine.volumes.list(filters={"label": f"com.docker.stack.namespace={name}"})}
    checks.shard_servers_are_primaries_with_own_volumes(stack, 2, volumes, name)
    for i in (1, 2):
        # Published in host mode, like the other PostgreSQL servers (on loopback: see the test above).
        ports = service(engine, stack, f"postgres-shard-{i}")["Spec"]["EndpointSpec"]["Ports"]
        assert [(p["TargetPort"], p["PublishedPort"], p["PublishMode"]) for p in ports] == [
            (5432, PORTS.shard(i), "host")], ports
    # The app's writes and reads land on each user's home server (X-Shard, and the server's own row).
    checks.requests_route_by_the_map(PORTS, ShardMap("consistent", 2))
    status, headers, body = request(PORTS.nginx, "POST", "/users",
                                    {"name": "swarm-new", "email": "swarm-new-shard-user@example.com", "region": "us"})
    assert status == 201, (status, body)
    home = ShardMap("consistent", 2).home(body["id"])
    assert headers["x-shard"] == f"shard-{home}", headers
    with clients.connect(stack.context(), f"shard-{home}") as conn:
        assert conn.execute("SELECT name FROM users WHERE id = %s", (body["id"],)).fetchone() == ("swarm-new",)
    assert stack.status()["resharding"]["to"]["count"] == 2


def test_resharding_moves_rows_live_under_load_and_sharding_off_removes_the_servers(stack, engine):
    total = sum(len(ids) for ids in clients_ids(stack, 2).values())
    with Trickle(PORTS.nginx) as load:
        done = timed("reshard_2_to_3_s", stack.apply, shards=3)
        time.sleep(0.3)
    TIMINGS["reshard_2_to_3_outcomes"] = {str(k): v for k, v in load.outcomes.items()}
    assert load.failures == {} and load.outcomes[200] > 0, load.outcomes
    report = stack.status()["resharding"]
    assert report["rows_moved"] > 0 and report["errors"] == 0, report
    assert any(line.startswith("resharded users online") and "rows moved" in line for line in done), done
    held = checks.every_row_at_home(stack, ShardMap("consistent", 3), total)
    assert all(held[i] for i in (1, 2, 3)), {i: len(ids) for i, ids in held.items()}
    checks.requests_route_by_the_map(PORTS, ShardMap("consistent", 3))
    # Another scheme over the same servers: only the users move, no service is touched.
    before = containers(stack)
    stack.apply(shard_scheme="modulo")
    assert containers(stack) == before
    checks.every_row_at_home(stack, ShardMap("modulo", 3), total)
    checks.requests_route_by_the_map(PORTS, ShardMap("modulo", 3), user_ids=(5, 6, 7))
    stack.apply(shards=0, shard_scheme="consistent")
    services = stack.status()["services"]
    assert not [s for s in services if s.startswith("postgres-shard-")], services
    assert not [s for s in engine.api.services() if "postgres-shard" in s["Spec"]["Name"]]
    assert all(port_is_free(PORTS.shard(i), "0.0.0.0") for i in range(1, 4))
    status, headers, _ = request(PORTS.nginx, "GET", "/users/42")
    assert status == 200 and "x-shard" not in headers, headers


def clients_ids(stack, count: int) -> dict:
    from stack import resharding
    return resharding.ids_by_shard(stack.context(), count)


# -- the CLI, faults, down ------------------------------------------------------------------------
def cli(stack, *args):
    return subprocess.run([sys.executable, "-m", "stack", "--backend", "swarm", "--state-dir", str(stack.state.path),
                           *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_status_scale_set(stack):
    out = cli(stack, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["backend"] == "swarm"
    assert cli(stack, "scale", "3").returncode == 0 and stack.applied().app.replicas == 3
    bad = cli(stack, "set", "strategy=foo")
    assert bad.returncode == 2 and "balancer.strategy='foo' is not allowed" in bad.stderr
    assert cli(stack, "set", "replicas=4").returncode == 0
    assert stack.applied() == Topology(base_port=BASE)
    assert get_stack(stack.state.path, backend="swarm").backend == "swarm"


def wait_replaced(stack, service: str, old: str, until=lambda: True, timeout: float = 30) -> None:
    """Until a new container runs `service` in place of `old` (and `until()` holds)."""
    deadline = time.monotonic() + timeout
    while containers(stack).get(service) in (None, old) or not until():
        assert time.monotonic() < deadline, f"Swarm did not replace {service} within {timeout:.0f} s: {containers(stack)}"
        time.sleep(0.1)


def test_a_killed_replica_is_replaced_by_swarm(stack, engine):
    replicas = stack.applied().app.replicas
    old = containers(stack)["app-2"]
    stack.kill("app-2")
    wait_replaced(stack, "app-2", old, until=lambda: running_tasks(engine, stack, "app") == replicas)
    stack.up()                     # pushes the applied config into the new task, reloads nothing else
    assert stack.status()["services"]["app-2"]["state"] == "running"


def test_a_killed_nginx_runs_its_seed_until_up_writes_the_live_upstream(stack, engine):
    def split(n):
        return Counter(request(PORTS.nginx, "GET", "/health")[1]["x-replica"] for _ in range(n))

    stack.apply(strategy="round_robin", weights=(3, 1, 1, 1))
    try:
        assert split(60) == {"app-1": 30, "app-2": 10, "app-3": 10, "app-4": 10}
        old = containers(stack)["nginx"]
        stack.kill("nginx")
        deadline = time.monotonic() + 60
        while containers(stack).get("nginx") in (None, old) or running_tasks(engine, stack, "nginx") != 1:
            assert time.monotonic() < deadline, "Swarm did not restart nginx within 60 s"
            time.sleep(0.2)
        note = stack.status()["services"]["nginx"].get("note", "")
        assert "seed upstream" in note, stack.status()["services"]["nginx"]
        seed = split(40)            # least_conn (nginx's last deploy) over tasks.app, equal weights
        assert set(seed) == {f"app-{i}" for i in range(1, 5)} and max(seed.values()) <= 13, seed
        assert stack.up() == [RELOADED_FOR_TASKS]
        assert "note" not in stack.status()["services"]["nginx"]
        assert split(60) == {"app-1": 30, "app-2": 10, "app-3": 10, "app-4": 10}
    finally:
        stack.apply(strategy="least_conn", weights=None)


def test_up_while_swarm_restarts_a_killed_server_waits_for_it_instead_of_calling_its_port_taken(stack, engine):
    """The new task's container holds the published port before its health check passes (the task
    is `starting`, not `running`): up() must know the port is its own."""
    old = containers(stack)["postgres-replica"]
    stack.kill("postgres-replica")
    wait_replaced(stack, "postgres-replica", old)
    assert stack.status()["services"]["postgres-replica"]["health"] == "starting"   # the window under test
    stack.up()
    assert stack.status()["services"]["postgres-replica"]["health"] == "healthy"
    with clients.connect(stack.context(), "replica") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


def test_up_refuses_a_port_another_program_took_while_swarm_restarted_the_server(stack, engine):
    """The other side of the test above: a program that grabs the killed server's port before
    Swarm's restart is named as such, and nothing is changed; once it lets go, up() heals."""
    import socket
    from stack.errors import PortInUseError
    port = PORTS.of("postgres-replica")
    stack.kill("postgres-replica")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # past the proxy's TIME_WAITs
    deadline = time.monotonic() + 10
    while True:                     # the port is free between the old task's end and the restart (5 s)
        try:
            squatter.bind((HOST, port))
            squatter.listen()
            break
        except OSError:
            assert time.monotonic() < deadline, f"port {port} never came free after the kill"
            time.sleep(0.01)
    try:
        while running_tasks(engine, stack, "postgres-replica"):    # until Swarm saw the task end
            assert time.monotonic() < deadline, "Swarm still reports the killed postgres-replica running"
            time.sleep(0.1)
        with pytest.raises(PortInUseError, match=f"port {port} \\(postgres-replica\\) is already in use"):
            stack.up()
    finally:
        squatter.close()
    stack.up()
    assert stack.status()["services"]["postgres-replica"]["health"] == "healthy"
    with clients.connect(stack.context(), "replica") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


def _replicas_behind(port: int, tries: int = 40) -> set[str]:
    return {request(port, "GET", "/users/7")[1]["x-replica"] for _ in range(tries)}


def test_the_stack_file_deploys_by_hand_and_nginx_follows_a_scale_by_hand(stack, engine, tmp_path):
    """The repository's swarm-stack.yml, rendered for a free block of ports, deployed with the
    commands its header gives (the `docker` CLI, no backend), then scaled by hand: nginx, running
    the seed upstream (`tasks.app`), must send to the new tasks and drop the removed ones."""
    from stack.docker.config import project_files
    from stack.swarm.stackfile import repository_files
    base = free_base(BASE + 64)
    topology = Topology(base_port=base)
    files = {**project_files(topology), **repository_files(topology)}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    init = subprocess.run([sys.executable, "-m", "stack.docker.runtime", "init", "docker/conf/topology.json",
                           "docker/run"], cwd=tmp_path, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    name = f"scalelab-byhand-{base}"
    try:
        deploy = subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never", "-c", "swarm-stack.yml", name],
                                cwd=tmp_path, capture_output=True, text=True)
        assert deploy.returncode == 0, deploy.stderr
        deadline = time.monotonic() + 90
        seen: set[str] = set()
        while seen != {"app-1", "app-2", "app-3", "app-4"}:
            assert time.monotonic() < deadline, f"replicas behind nginx after 90 s: {seen}"
            time.sleep(1)
            try:
                seen = _replicas_behind(base)
            except (OSError, KeyError):
                seen = set()
        for count, expected in ((6, {f"app-{i}" for i in range(1, 7)}), (3, {"app-1", "app-2", "app-3"})):
            scaled = subprocess.run(["docker", "service", "scale", f"{name}_app={count}"], capture_output=True, text=True)
            assert scaled.returncode == 0, scaled.stderr
            deadline = time.monotonic() + 10      # the service converged; nginx-follow-tasks polls every 2 s
            while (seen := _replicas_behind(base)) != expected:
                assert time.monotonic() < deadline, f"after a scale to {count} by hand nginx sends to {seen}"
                time.sleep(0.5)
    finally:
        subprocess.run(["docker", "stack", "rm", name], capture_output=True, text=True)
        deadline = time.monotonic() + 60
        while engine.api.containers(all=True, filters={"label": f"com.docker.stack.namespace={name}"}):
            assert time.monotonic() < deadline, "the stack deployed by hand is still there 60 s after `stack rm`"
            time.sleep(0.5)


def test_down_removes_the_stack_and_leaves_the_swarm_it_made(stack, engine):
    name = stack.status()["stack"]
    done = timed("down_s", stack.down)
    assert "stopped nginx" in done and "left the swarm this stack had initialised" in done
    assert engine.info()["Swarm"]["LocalNodeState"] == "inactive"
    assert not engine.api.containers(all=True, filters={"label": f"com.docker.stack.namespace={name}"})
    assert port_is_free(BASE, "0.0.0.0")
