"""The topology as a compose project: a plain dict (the compose model) and its YAML text.

One model, two uses:

* `standalone=True`: the file kept in the repository (stack/compose.yml), for anyone
  who just wants `docker compose up` (or `docker-compose --compatibility up`). Images
  build from the Dockerfiles in stack/docker/images; a one-shot `secrets-init` service
  generates the passwords into a volume on the first start.
* `standalone=False`: what a DockerStack runs. It creates each service's container from
  this model with the docker SDK (see `container_spec`), and writes the same model as
  compose.yml into its state directory, so `docker compose -p <project> ps|logs` work too.

The article's form is kept: every app replica has `deploy.replicas` and
`deploy.resources.limits` (cpus, memory); each replica is its own service (app-1,
app-2 ...) so nginx can give each one its own weight, as the article's app1/app2/app3.
Every port is published on 127.0.0.1 only, at the local backend's offsets.
"""
from __future__ import annotations

import re

import yaml

from ..plan import app_name, services_for
from ..ports import HOST, Ports
from ..render.addressing import INTERNAL_PORTS, internal_port
from ..topology import Topology
from .config import CONF_DIR, PGDATA, RUN_DIR

IMAGES = ("app", "postgres", "redis", "nginx")
APP_MEMORY = "512M"            # the article's per-replica memory limit
DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
# The first check runs `interval` after the start; failures within `start_period` do not count.
# Each check is a `docker exec`, which costs the engine ~50 ms of CPU here: every 5 s that is
# ~0.09 of a core for 9 containers (every second it would be 0.45 of this 2-core machine's
# cores, skewing the course's measurements), and `up` still sees every service healthy in ~7 s.
HEALTH_TIMING = {"interval": "5s", "timeout": "3s", "retries": 3, "start_period": "60s"}
HEADER = """\
# ScaleLab's stack as a compose project. Rendered by stack.docker.compose from the default
# Topology: edits are overwritten (`python -m stack.docker render` rewrites it, and
# tests/test_docker_render.py fails when it drifts from the renderer).
#
#   docker compose up -d --wait        # or: docker-compose --compatibility up -d
#   curl http://127.0.0.1:18080/users/1
#   docker compose down                # add -v to delete the data and the generated secrets
#
# Images build from stack/docker/images/*.Dockerfile on ${SCALELAB_DOCKER_BASE_IMAGE:-debian:bookworm-slim};
# where no registry serves it, make a base image locally (stack/scripts/docker-tier.sh shows how)
# and set SCALELAB_DOCKER_BASE_IMAGE. Put extra CA certificates in stack/docker/images/certs/.
# The live, changeable stack is `stack.docker.DockerStack` (or `python -m stack.docker up`).
"""


def image_name(name: str, tag: str = "latest") -> str:
    return f"scalelab/{name}:{tag}"


def image_of(service: str) -> str:
    if service.startswith("app-"):
        return "app"
    if service.startswith("postgres") or service == "pgbouncer":
        return "postgres"
    return service


def host_port(service: str, ports: Ports) -> int:
    return ports.of(service)


def _build(kind: str) -> dict:
    # Every service that uses an image can build it: compose then never tries to pull one.
    # The host's network, as `python -m stack.docker build` uses: apt and pip work on engines
    # without a default bridge (the CI tier's) and behind the host's proxy settings.
    return {"context": ".", "dockerfile": f"docker/images/{kind}.Dockerfile", "network": "host",
            "args": {"BASE_IMAGE": "${SCALELAB_DOCKER_BASE_IMAGE:-" + DEFAULT_BASE_IMAGE + "}"}}


def _health(*test: str) -> dict:
    return {"test": ["CMD", *test], **HEALTH_TIMING}


def _service(topology: Topology, name: str, standalone: bool, images: dict[str, str]) -> dict:
    ports = Ports(topology.base_port)
    conf = "./docker/conf"
    run_source = "runtime" if standalone else None

    def runtime(part: str) -> str:
        # Standalone: the whole runtime volume; a DockerStack: only this service's own files.
        return f"{run_source}:{RUN_DIR}:ro" if standalone else f"./docker/run/{part}:{RUN_DIR}/{part}:ro"

    kind = image_of(name)
    svc: dict = {"image": images[kind]}
    if standalone:
        svc["build"] = _build(kind)
    svc["init"] = True
    if name.startswith("postgres-"):
        role = name.split("-")[1]        # primary, replica, shard (a primary of its own, no standby)
        svc["command"] = ["postgres-entry", role]
        svc["volumes"] = [f"{conf}/{name}:{CONF_DIR}/postgres:ro", runtime("postgres"),
                          f"{data_volume(name)}:{PGDATA}"]
        svc["healthcheck"] = _health("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(INTERNAL_PORTS["postgres"]))
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM ("smart") would wait for every pooled client.
        svc["stop_signal"] = "SIGINT"
        svc["stop_grace_period"] = "15s"
    elif name == "pgbouncer":
        svc["command"] = ["pgbouncer", f"{CONF_DIR}/pgbouncer/pgbouncer.ini"]
        svc["volumes"] = [f"{conf}/pgbouncer:{CONF_DIR}/pgbouncer:ro", runtime("pgbouncer")]
        svc["healthcheck"] = _health("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(INTERNAL_PORTS["pgbouncer"]),
                                     "-d", "scalelab", "-U", "app")
        svc["stop_signal"] = "SIGTERM"      # PgBouncer's immediate shutdown (its image says SIGINT)
        svc["stop_grace_period"] = "5s"
    elif name == "redis":
        svc["volumes"] = [f"{conf}/redis:{CONF_DIR}/redis:ro", runtime("redis")]
        svc["healthcheck"] = _health("redis-health")
        svc["stop_grace_period"] = "5s"
    elif name == "nginx":
        svc["volumes"] = [f"{conf}/nginx:{CONF_DIR}/nginx:ro"]
        svc["healthcheck"] = _health("http-health", str(INTERNAL_PORTS["nginx"]), "/nginx-health")
        svc["stop_grace_period"] = "5s"
    else:   # an app replica
        svc["environment"] = {"SCALELAB_REPLICA": name, "SCALELAB_APP_CONFIG": f"{RUN_DIR}/app/config.json"}
        svc["volumes"] = [runtime("app")]
        svc["healthcheck"] = _health("http-health", str(INTERNAL_PORTS["app"]), "/health")
        # uvicorn finishes in-flight requests on SIGTERM (at most 5 s), then exits.
        svc["stop_grace_period"] = "8s"
        limits: dict = {}
        if topology.app.cpu_quota is not None:
            limits["cpus"] = f"{topology.app.cpu_quota:g}"
        limits["memory"] = APP_MEMORY
        svc["deploy"] = {"replicas": 1, "resources": {"limits": limits}}
    svc["ports"] = [f"{HOST}:{host_port(name, ports)}:{internal_port(name)}"]
    if standalone:
        depends = {} if name == "nginx" else {"secrets-init": {"condition": "service_completed_successfully"}}
        if name in ("postgres-replica", "pgbouncer"):
            depends["postgres-primary"] = {"condition": "service_healthy"}
        if name == "nginx":
            depends.update({app_name(i): {"condition": "service_started"}
                            for i in range(1, topology.app.replicas + 1)})
        svc["depends_on"] = depends
    return svc


def data_volume(service: str) -> str:
    """The data volume of a PostgreSQL service: primary-data, replica-data, shard-1-data ..."""
    return f"{service[len('postgres-'):]}-data"


def data_volumes(topology: Topology) -> list[str]:
    return [data_volume(s) for s in services_for(topology) if s.startswith("postgres-")]


def compose_model(topology: Topology, *, standalone: bool = True, images: dict[str, str] | None = None,
                  project: str | None = None) -> dict:
    """The compose file as a dict. `images` maps app/postgres/redis/nginx to image references."""
    images = images or {name: image_name(name) for name in IMAGES}
    services: dict = {}
    if standalone:
        services["secrets-init"] = {
            "image": images["app"], "build": _build("app"), "init": True, "user": "root",
            "command": ["python", "-m", "stack.docker.runtime", "init", f"{CONF_DIR}/topology.json", RUN_DIR],
            "volumes": [f"./docker/conf/topology.json:{CONF_DIR}/topology.json:ro", f"runtime:{RUN_DIR}"],
            "restart": "no",
        }
    for name in services_for(topology):
        services[name] = _service(topology, name, standalone, images)
        if not standalone and project:
            services[name]["container_name"] = f"{project}-{name}"
    volumes = {volume: {} for volume in data_volumes(topology)}
    if standalone:
        volumes["runtime"] = {}
    return {"services": services, "volumes": volumes}


# -- YAML ---------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block style, except short lists of plain words ([CMD, pg_isready, ...]) on one line."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)     # list items indented under their key


def _list(dumper: yaml.SafeDumper, items: list):
    flow = all(isinstance(i, (str, int, float)) and ":" not in str(i) for i in items) \
        and len(str(items)) <= 100
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _list)


def to_yaml(model: dict, header: str = HEADER) -> str:
    """The model as YAML (PyYAML: quoting of ports, durations and booleans is its job, not ours)."""
    return header + yaml.dump(model, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)


def render_compose(topology: Topology | None = None, **kwargs) -> str:
    """compose.yml text; with no arguments, the file kept in the repository."""
    return to_yaml(compose_model(topology or Topology(), **kwargs))


# -- from the model to docker SDK arguments --------------------------------------------------
def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not match:
        raise ValueError(f"duration {text!r}: expected e.g. 500ms, 2s, 1m")
    number, unit = float(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1, "m": 60}[unit]


def _memory_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG])", text)
    if not match:
        raise ValueError(f"memory {text!r}: expected e.g. 512M")
    return int(match.group(1)) * {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[match.group(2)]


def container_spec(service: str, svc: dict, project: str, project_dir, network: str) -> dict:
    """Keyword arguments for `client.containers.create(...)` that realise one compose service.

    Relative bind sources resolve against the project directory; named volumes are
    prefixed with the project name, as compose does. CPU limits use a quota over a
    100 ms period (not NanoCpus) so `container.update()` can change them live.
    """
    from pathlib import Path
    mounts = []
    for spec in svc.get("volumes", []):
        source, target, *mode = spec.split(":")
        read_only = bool(mode and mode[0] == "ro")
        if source.startswith("./") or source.startswith("/"):
            mounts.append({"Type": "bind", "Source": str((Path(project_dir) / source).resolve()),
                           "Target": target, "ReadOnly": read_only})
        else:
            mounts.append({"Type": "volume", "Source": f"{project}_{source}", "Target": target,
                           "ReadOnly": read_only})
    ports = {}
    for spec in svc.get("ports", []):
        address, published, target = spec.rsplit(":", 2)
        ports[f"{target}/tcp"] = (address, int(published))
    health = svc["healthcheck"]
    ns = 1_000_000_000
    kwargs = {
        "image": svc["image"], "name": svc.get("container_name", f"{project}-{service}"),
        "init": bool(svc.get("init")), "detach": True, "ports": ports,
        "environment": dict(svc.get("environment", {})),
        "healthcheck": {"test": health["test"], "interval": int(_seconds(health["interval"]) * ns),
                        "timeout": int(_seconds(health["timeout"]) * ns), "retries": health["retries"],
                        "start_period": int(_seconds(health["start_period"]) * ns)},
        "stop_signal": svc.get("stop_signal", "SIGTERM"),
        "labels": {"com.docker.compose.project": project, "com.docker.compose.service": service,
                   "com.docker.compose.oneoff": "False", "com.docker.compose.container-number": "1",
                   "scalelab.project": project, "scalelab.service": service},
        "network": network,
        "hostname": service,
    }
    if "command" in svc:
        kwargs["command"] = list(svc["command"])
    if "user" in svc:
        kwargs["user"] = svc["user"]
    limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
    if "memory" in limits:
        kwargs["mem_limit"] = _memory_bytes(limits["memory"])
    if "cpus" in limits:
        kwargs["cpu_period"] = 100_000
        kwargs["cpu_quota"] = int(float(limits["cpus"]) * 100_000)
    kwargs["_mounts"] = mounts
    kwargs["_stop_timeout"] = int(_seconds(svc.get("stop_grace_period", "10s")))
    return kwargs
