"""The live stack against real PostgreSQL, nginx, PgBouncer and Valkey processes.

One stack is brought up for the module (base port 20000) and changed step by
step; the last test takes it down and checks nothing is left behind.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import psutil
import psycopg
import pytest

import stack_checks as checks
from conftest import Trickle, request, shifted_port
from stack.errors import BinaryNotFoundError
from stack import clients
from stack.local.backend import LocalStack
from stack.ports import Ports
from stack.topology import Topology

BASE = shifted_port(20000)
PORTS = Ports(BASE)
pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def stack(state_dir):
    s = LocalStack(state_dir)
    s.up(Topology(base_port=BASE))
    yield s
    s.down()


def pids(stack) -> dict:
    return {name: info["pid"] for name, info in stack.status()["services"].items()}


def replica_name_of_user(stack, user_id: int) -> str:
    return checks.replica_name_of_user(stack, PORTS, user_id)


def test_up_brings_every_service_to_healthy(stack):
    services = stack.status()["services"]
    expected = {"nginx", "redis", "pgbouncer", "postgres-primary", "postgres-replica",
                "app-1", "app-2", "app-3", "app-4"}
    assert set(services) == expected
    assert all(info["state"] == "running" for info in services.values()), services
    assert request(PORTS.nginx, "GET", "/nginx-health")[0] == 200
    assert clients.redis_client(stack.context()).ping()
    status, headers, body = request(PORTS.nginx, "GET", "/users/42")
    assert status == 200 and body["email"] == "user42@example.com"
    assert {"cache", "db", "app"} <= {part.split(";")[0].strip() for part in headers["server-timing"].split(",")}


def test_requests_through_nginx_reach_every_replica(stack):
    checks.requests_reach_every_replica(PORTS)


def test_bad_requests_get_clear_4xx(stack):
    status, _, body = request(PORTS.nginx, "GET", "/users/abc")
    assert status == 400 and "integer" in body["error"] and "'abc'" in body["error"]
    status, _, body = request(PORTS.nginx, "POST", "/users", {"name": "only a name"})
    assert status == 400 and body["error"] == "missing field 'email'"
    status, _, body = request(PORTS.nginx, "GET", "/users/999999")
    assert status == 404
    status, _, body = request(PORTS.nginx, "GET", "/work?ms=-1")
    assert status == 400 and "ms must be from 0" in body["error"]


def test_row_written_on_primary_appears_on_replica(stack):
    checks.row_written_on_primary_appears_on_replica(stack, PORTS)


def test_replica_delay_breaks_read_your_writes_and_reset_restores_it(stack):
    stack.apply(replica_delay_ms=1500)
    status, _, _ = request(PORTS.nginx, "PUT", "/users/7", {"name": "delayed"})
    assert status == 200
    time.sleep(0.3)
    # The write was acknowledged; a read through the app (replica) still sees the old row.
    assert request(PORTS.nginx, "GET", "/users/7")[2]["name"] != "delayed"
    assert replica_name_of_user(stack, 7) != "delayed"
    stack.apply(replica_delay_ms=0)
    request(PORTS.nginx, "PUT", "/users/7", {"name": "prompt"})
    time.sleep(0.2)
    assert replica_name_of_user(stack, 7) == "prompt"


def test_remote_apply_gives_read_your_writes_immediately(stack):
    checks.remote_apply_gives_read_your_writes(stack, PORTS)


def test_pgbouncer_is_in_the_write_path(stack):
    def app_pool():
        rows = [r for r in clients.pgbouncer_admin(stack.context(), "SHOW POOLS") if r["database"] == "scalelab"]
        return rows[0] if rows else None

    def app_stats():
        return next(r for r in clients.pgbouncer_admin(stack.context(), "SHOW STATS") if r["database"] == "scalelab")

    before = app_stats()["total_xact_count"]
    for i in range(5):
        assert request(PORTS.nginx, "PUT", f"/users/{100 + i}", {"name": f"pooled-{i}"})[0] == 200
    assert app_stats()["total_xact_count"] >= before + 5
    pool = app_pool()
    assert pool["user"] == "app" and pool["pool_mode"] == "transaction"


def test_ttl_change_is_applied_to_every_replica(stack):
    checks.ttl_change_reaches_every_replica(stack, PORTS, pids)


def test_cache_invalidation_on_write(stack):
    request(PORTS.nginx, "GET", "/users/400")
    cache = clients.redis_client(stack.context())
    assert cache.exists("user:400")
    request(PORTS.nginx, "PUT", "/users/400", {"name": "fresh"})
    assert not cache.exists("user:400")


def test_up_twice_changes_nothing(stack):
    checks.up_twice_changes_nothing(stack, pids)


def test_second_process_attaches(stack):
    out = subprocess.run([sys.executable, "-m", "stack", "--state-dir", str(stack.state.path), "status", "--json"],
                         capture_output=True, text=True, check=True).stdout
    status = json.loads(out)
    assert {name: info["pid"] for name, info in status["services"].items()} == pids(stack)
    assert status["url"] == f"http://127.0.0.1:{BASE}"
    assert status["services"]["nginx"]["address"] == f"127.0.0.1:{BASE}"


def test_scaling_and_strategy_changes_under_load_lose_no_request(stack):
    with Trickle(PORTS.nginx) as load:
        stack.apply(replicas=2)
        time.sleep(0.3)
        stack.apply(replicas=6)
        time.sleep(0.3)
        stack.apply(strategy="round_robin")
        time.sleep(0.3)
        stack.apply(weights=(1, 1, 1, 1, 1, 5))
        time.sleep(0.3)
        stack.apply(strategy="least_conn", weights=None, replicas=4)
        time.sleep(0.3)
    assert sum(load.outcomes.values()) > 100
    assert load.failures == {}, load.outcomes
    assert {"app-5", "app-6"} <= set(load.replicas)    # the added replicas served traffic
    assert sorted(s for s in pids(stack) if s.startswith("app-")) == ["app-1", "app-2", "app-3", "app-4"]


def test_weights_shape_the_split(stack):
    checks.weights_shape_the_split(stack, PORTS)


@pytest.mark.parametrize("changes, field", checks.BAD_INPUT)
def test_bad_input_is_refused_and_the_stack_is_unchanged(stack, changes, field):
    checks.bad_input_is_refused(stack, pids, changes, field)


def test_port_in_use_is_refused_and_the_stack_is_unchanged(stack):
    checks.port_in_use_is_refused(stack, PORTS, pids)


def test_missing_binary_is_refused_and_the_stack_is_unchanged(stack, tmp_path):
    before, topology = pids(stack), stack.applied()
    elsewhere = LocalStack(stack.state.path, binaries="system", search_path=str(tmp_path))
    with pytest.raises(BinaryNotFoundError, match="Install it: "):
        elsewhere.apply(replicas=5)
    assert pids(stack) == before and stack.applied() == topology


def cli(stack, *args):
    return subprocess.run([sys.executable, "-m", "stack", "--state-dir", str(stack.state.path), *args],
                          capture_output=True, text=True)


def test_cli_scale_set_logs_and_errors(stack):
    assert cli(stack, "scale", "3").returncode == 0
    assert stack.applied().app.replicas == 3 and "app-4" not in pids(stack)
    done = cli(stack, "set", "strategy=round_robin", "cache.ttl_s=60")
    assert done.returncode == 0, done.stderr
    assert (stack.applied().balancer.strategy, stack.applied().cache.ttl_s) == ("round_robin", 60)
    bad = cli(stack, "set", "strategy=foo")
    assert bad.returncode == 2
    assert "balancer.strategy='foo' is not allowed: one of 'round_robin'" in bad.stderr
    assert stack.applied().balancer.strategy == "round_robin"
    missing = cli(stack, "logs", "nope")
    assert missing.returncode == 2 and "known services are" in missing.stderr and "nginx" in missing.stderr
    assert cli(stack, "logs", "postgres-primary").returncode == 0
    assert cli(stack, "set", "strategy=least_conn", "cache.ttl_s=300", "replicas=4").returncode == 0
    assert stack.applied() == Topology(base_port=BASE)


def test_the_fields_own_clients_reach_every_service_by_the_cli_url(stack):
    """psql (the real client, the one `python -m stack psql` runs), redis-py from the redis:// URL
    and an HTTP GET of the nginx URL: what a learner pastes after `python -m stack url`."""
    from stack.standard_clients import psql_path
    psql = psql_path()
    assert psql is not None, "no psql: the PostgreSQL wheel brings one"
    for server, in_recovery in (("primary", "f"), ("standby", "t")):
        url = cli(stack, "url", server).stdout.strip()
        done = subprocess.run([str(psql), url, "-Atc", "SELECT pg_is_in_recovery(), count(*) FROM users"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.startswith(f"{in_recovery}|"), (server, done.stderr)
    done = cli(stack, "psql", "pgbouncer", "--db", "pgbouncer", "--", "-Atc", "SHOW VERSION")
    assert done.returncode == 0 and "PgBouncer" in done.stdout, done.stderr
    done = cli(stack, "psql", "--user", "app", "--", "-Atc", "SELECT current_user")
    assert done.stdout.strip() == "app", done.stderr
    # The password reaches psql in its environment, not on its command line (which `ps` shows).
    import stack.standard_clients as standard
    seen = {}
    real_execve = standard.os.execve
    standard.os.execve = lambda program, argv, env: seen.update(argv=argv, env=env)
    try:
        standard.exec_psql(stack, "primary", ["-c", "SELECT 1"], user="postgres", dbname="scalelab")
    finally:
        standard.os.execve = real_execve
    password = clients.postgres_password(stack, "postgres")
    assert seen["env"]["PGPASSWORD"] == password and not any(password in a for a in seen["argv"]), seen["argv"]
    import redis
    assert redis.Redis.from_url(cli(stack, "url", "redis").stdout.strip()).ping()
    with urllib.request.urlopen(cli(stack, "url", "nginx").stdout.strip() + "users/1", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["X-Replica"].startswith("app-")
    listing = cli(stack, "url").stdout
    assert 'psql "postgresql://' in listing and 'redis-cli -u "redis://' in listing and "curl -i" in listing
    for bad, says in ((("url", "nope"), "service='nope' is not allowed"),
                      (("url", "shard-1"), "service='shard-1' is not part of this topology"),
                      (("psql", "redis"), "server='redis' is not allowed"),
                      (("psql", "-c", "SELECT 1"), "psql's own options go after --")):
        done = cli(stack, *bad)
        assert done.returncode == 2 and says in done.stderr, (bad, done.stderr)


def test_every_listening_socket_is_on_loopback(stack):
    ours = set()
    for pid in pids(stack).values():
        proc = psutil.Process(pid)
        ours |= {pid} | {child.pid for child in proc.children(recursive=True)}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert len(listening) >= 9
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening


def test_down_leaves_no_process_and_no_bound_port(stack):
    topology = stack.applied()
    before = pids(stack)
    stack.down()
    for name, pid in before.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    for name, port in Ports(BASE).all_for(topology).items():
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a listener could bind: nothing holds it
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            holders = [c for c in psutil.net_connections(kind="inet") if c.laddr and c.laddr.port == port]
            pytest.fail(f"{name} port {port} still bound: {holders}")
        finally:
            probe.close()
    assert stack.down() == []   # a second down finds nothing to stop


def test_warm_up_keeps_the_data(stack):
    """After down, up reuses the data directories: the writes made earlier are still there."""
    stack.up()
    try:
        assert request(PORTS.nginx, "GET", "/users/400")[2]["name"] == "fresh"
    finally:
        stack.down()


def test_exhausted_pool_answers_503_naming_the_pool(state_dir):
    """Two read connections, six slow queries at once: four wait 0.2 s for a connection, then 503."""
    from concurrent.futures import ThreadPoolExecutor
    stack = LocalStack(state_dir)
    stack.up(Topology(base_port=BASE).with_changes(replicas=1, read_pool=2, pool_timeout_s=0.2))
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: request(PORTS.nginx, "GET", "/work?kind=db&ms=600"), range(6)))
    finally:
        stack.down()
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 2, 503: 4}, statuses
    errors = {body["error"] for status, _, body in answers if status == 503}
    assert errors == {"read pool exhausted: all 2 connections busy for 0.2 s"}


def test_max_connections_restarts_both_servers_in_a_safe_order(state_dir):
    """Growing and shrinking max_connections: the standby must keep replaying either way."""
    stack = LocalStack(state_dir)
    stack.up(Topology(base_port=BASE).with_changes(replicas=1))
    try:
        for value in (250, 150):
            stack.apply(max_connections=value)
            ctx = stack.context()
            for server in ("primary", "standby"):
                with psycopg.connect(clients.dsn(ctx, server)) as conn:
                    assert conn.execute("SHOW max_connections").fetchone()[0] == str(value)
            assert request(PORTS.nginx, "PUT", "/users/9", {"name": f"after-{value}"})[0] == 200
            deadline = time.monotonic() + 3      # the standby reconnects to the restarted primary
            while replica_name_of_user(stack, 9) != f"after-{value}" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert replica_name_of_user(stack, 9) == f"after-{value}"
    finally:
        stack.apply(max_connections=200)
        stack.down()
