"""The Docker backend's pure parts: no engine needed, so these run in every tier.

The committed stack/compose.yml (and the config files beside it) must be exactly the
renderer's output; the compose model must keep the issue's promises (loopback-only
ports at the local backend's offsets, a health check and an init on every service,
the article's deploy.replicas/resources.limits); and an unreachable engine must give
an error that says what to do.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stack.app.config import AppConfig
from stack.docker import compose as compose_mod
from stack.docker.__main__ import repository_files
from stack.docker.compose import compose_model, container_spec, render_compose, services_for
from stack.docker.config import project_files, render_upstream_conf, runtime_files
from stack.docker.images import build_context
from stack.docker.runtime import new_secrets
from stack.ports import Ports
from stack.topology import Topology

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "stack"
SECRETS = {"postgres_password": "pg-secret", "app_password": "app-secret",
           "redis_password": "redis-secret", "admin_token": "token-secret"}


def test_committed_compose_project_matches_the_renderer():
    stale = [str(path.relative_to(ROOT)) for path, text in repository_files().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, (f"{', '.join(stale)} drifted from the renderer: run `python -m stack.docker render` "
                       f"and commit the result")


def test_compose_yaml_parses_to_the_model():
    yaml = pytest.importorskip("yaml")
    topology = Topology().with_changes(replicas=3, weights=(3, 1, 1), cpu_quota=0.5)
    assert yaml.safe_load(render_compose(topology)) == compose_model(topology)
    backend = compose_model(topology, standalone=False, project="scalelab-test")
    assert yaml.safe_load(compose_mod.to_yaml(backend)) == backend


@pytest.mark.parametrize("standalone", [True, False])
def test_every_service_is_healthchecked_has_an_init_and_publishes_on_loopback(standalone):
    topology = Topology(base_port=30000).with_changes(replicas=3)
    model = compose_model(topology, standalone=standalone, project="p")
    expected_ports = Ports(30000).all_for(topology)
    published = {}
    for name, svc in model["services"].items():
        assert svc["init"] is True, name
        if name == "secrets-init":
            continue
        assert svc["healthcheck"]["test"][0] == "CMD", name
        for spec in svc["ports"]:
            host, port, _ = spec.split(":")
            assert host == "127.0.0.1", spec
            published[name] = int(port)
    assert published == expected_ports          # the local backend's offsets, app-i included
    assert ("secrets-init" in model["services"]) == standalone


def test_app_replicas_follow_the_article():
    model = compose_model(Topology().with_changes(replicas=3, cpu_quota=0.5))
    apps = {n: s for n, s in model["services"].items() if n.startswith("app-")}
    assert sorted(apps) == ["app-1", "app-2", "app-3"]
    for name, svc in apps.items():
        assert svc["deploy"] == {"replicas": 1, "resources": {"limits": {"cpus": "0.5", "memory": "512M"}}}
        assert svc["environment"]["SCALELAB_REPLICA"] == name
    assert "cpus" not in compose_model(Topology())["services"]["app-1"]["deploy"]["resources"]["limits"]


def test_upstream_addresses_each_replica_by_name_with_its_weight():
    text = render_upstream_conf(Topology().with_changes(replicas=3, weights=(3, 1, 1), strategy="round_robin"))
    assert "    server app-1:8000 weight=3 max_fails=1 fail_timeout=10s;" in text
    assert "    server app-3:8000 weight=1 " in text
    assert "least_conn" not in text and "keepalive 32;" in text


def test_services_follow_the_topology():
    assert services_for(Topology()) == ["postgres-primary", "postgres-replica", "redis", "pgbouncer",
                                        "app-1", "app-2", "app-3", "app-4", "nginx"]
    no_bouncer = Topology().with_changes(**{"pgbouncer.enabled": False}, replicas=1)
    assert services_for(no_bouncer) == ["postgres-primary", "postgres-replica", "redis", "app-1", "nginx"]


def test_no_secret_reaches_the_project_files():
    files = project_files(Topology())
    runtime = "".join(runtime_files(Topology(), SECRETS).values())
    assert all(value in runtime for value in SECRETS.values())
    for rel, text in files.items():
        for value in SECRETS.values():
            assert value not in text, rel
    assert "trust" not in files["docker/conf/postgres-primary/pg_hba.conf"].replace("# ", "")
    assert "scram-sha-256" in files["docker/conf/postgres-primary/pg_hba.conf"]


def test_runtime_files_hold_the_secrets_and_a_config_the_app_loads(tmp_path):
    files = runtime_files(Topology(), SECRETS)
    config = json.loads(files["app/config.json"])
    (tmp_path / "config.json").write_text(files["app/config.json"])
    loaded = AppConfig.load(tmp_path / "config.json")
    assert loaded.write_dsn == "host=pgbouncer port=6432 user=app password=app-secret dbname=scalelab"
    assert loaded.redis_url == "redis://:redis-secret@redis:6379/0"
    assert config["admin_token"] == "token-secret"
    assert '"app" "app-secret"' in files["pgbouncer/userlist.txt"]
    direct = json.loads(runtime_files(Topology().with_changes(**{"pgbouncer.enabled": False}), SECRETS)
                        ["app/config.json"])
    assert direct["write_dsn"].startswith("host=postgres-primary port=5432 ")


def test_secrets_init_generates_once_and_keeps_them(tmp_path):
    topology_json = tmp_path / "topology.json"
    topology_json.write_text(json.dumps(Topology().to_dict()))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "stack.docker.runtime", "init", str(topology_json), str(run)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    first = (run / "secrets.json").read_text()
    assert oct((run / "secrets.json").stat().st_mode & 0o777) == "0o600"
    assert (run / "redis" / "auth.conf").read_text().startswith("requirepass ")
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    assert (run / "secrets.json").read_text() == first
    assert set(new_secrets()) == set(json.loads(first))


def test_container_spec_realises_the_model(tmp_path):
    topology = Topology(base_port=30000).with_changes(cpu_quota=0.25)
    model = compose_model(topology, standalone=False, project="p")
    spec = container_spec("app-2", model["services"]["app-2"], "p", tmp_path, "p_default")
    assert spec["ports"] == {"8000/tcp": ("127.0.0.1", 30012)}
    assert spec["init"] is True and spec["cpu_quota"] == 25_000 and spec["mem_limit"] == 512 * 1024 ** 2
    assert spec["healthcheck"]["interval"] == 5_000_000_000
    assert spec["_mounts"] == [{"Type": "bind", "Source": str(tmp_path / "docker/run/app"),
                                "Target": "/run/scalelab/app", "ReadOnly": True}]
    primary = container_spec("postgres-primary", model["services"]["postgres-primary"], "p", tmp_path, "n")
    assert {"Type": "volume", "Source": "p_primary-data", "Target": "/var/lib/postgresql/data",
            "ReadOnly": False} in primary["_mounts"]


def test_dockerfiles_take_the_base_image_as_a_build_argument_and_extra_certificates():
    for kind in compose_mod.IMAGES:
        text = (STACK / "docker" / "images" / f"{kind}.Dockerfile").read_text()
        assert re.search(r"^ARG BASE_IMAGE=debian:bookworm-slim\nFROM \$\{BASE_IMAGE\}$", text, re.M), kind
        assert "COPY docker/images/certs/ /tmp/scalelab-certs/" in text, kind
        assert "apt-install" in text, kind


def test_app_image_pins_match_requirements():
    def pins(path: Path) -> dict:
        found = {}
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==")
                found[name.split("[")[0].lower()] = (name, version.strip())
        return found
    image = pins(STACK / "docker" / "images" / "app-requirements.txt")
    repo = pins(ROOT / "requirements.txt")
    assert image and all(repo.get(name) == pin for name, pin in image.items()), (image, repo)


def test_build_context_is_small_stable_and_complete():
    tar1, hash1 = build_context("app")
    tar2, hash2 = build_context("app")
    assert hash1 == hash2 and tar1 == tar2
    import io
    import tarfile
    names = tarfile.open(fileobj=io.BytesIO(tar1)).getnames()
    assert "app/service.py" in names and "docker/images/app.Dockerfile" in names
    assert "docker/runtime.py" in names and "topology.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "local/backend.py" not in names             # the app image holds what the app needs
    assert build_context("nginx")[1] != hash1


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return [shutil.which("docker-compose")]
    return None


def test_compose_cli_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (validation only; "
                    "the Docker tier installs docker-compose)")
    result = subprocess.run([*cli, "-f", str(STACK / "compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=STACK, env={**os.environ, "DOCKER_HOST": ""})
    assert result.returncode == 0, result.stderr


def test_no_engine_gives_an_error_that_says_what_to_do(tmp_path, monkeypatch):
    from stack.docker import DockerStack, EngineUnavailableError
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    stack = DockerStack(tmp_path / "state")
    with pytest.raises(EngineUnavailableError) as info:
        stack.up()
    message = str(info.value)
    assert f"DOCKER_HOST=unix://{tmp_path}/no-engine.sock" in message
    assert "start Docker" in message and "backend='local'" in message
    assert stack.status()["services"] == {}          # status needs no engine when nothing ran
    result = subprocess.run([sys.executable, "-m", "stack.docker", "--state-dir", str(tmp_path / "s"), "up"],
                            capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert result.returncode == 2 and "error: no Docker engine is reachable" in result.stderr


def test_the_app_imports_from_exactly_the_files_its_image_holds(tmp_path):
    """The image copies a subset of the package: the app and its entry points must import from it alone."""
    import io
    import tarfile
    tar, _ = build_context("app")
    package = tmp_path / "stack"
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(package)
    # Without the editable install's finder, which would quietly supply any file the image lacks.
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in repr(f)]; "
            "import stack.app.service, stack.app.connections, stack.docker.runtime; "
            "import stack; assert stack.__file__.startswith(sys.argv[1]), stack.__file__")
    result = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
