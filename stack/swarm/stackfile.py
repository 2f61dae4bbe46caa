"""The topology as a Swarm stack file: one replicated app service with the article's deploy block.

    docker swarm init --advertise-addr 127.0.0.1                      # from the repository's root:
    .venv/bin/python -m stack.docker build
    .venv/bin/python -m stack.docker.runtime init stack/docker/conf/topology.json stack/docker/run
    docker stack deploy --resolve-image never -c stack/swarm-stack.yml scalelab

Differences from the compose project (stack.docker.compose), each forced by Swarm:

* The app is ONE service, `app`, with `deploy.replicas` and `deploy.resources.limits`
  (cpus, memory) from the topology, as in the article. Its tasks share one spec, so the
  deployed nginx config balances over `tasks.app` (every task's address, resolved
  when nginx loads its config), with equal weights. That config is nginx's seed: it is
  copied where nginx reads it when the task starts, and the backend then writes the live
  upstream there and reloads nginx (a strategy, keepalive or retry change in about a second,
  no request dropped). The live upstream has one server line per running task, by its
  overlay address, in slot order (app-1 first), so per-replica weights and a consistent
  hash's ring work as on the other backends.
* Config files are Swarm configs and the files holding passwords Swarm secrets, both
  immutable: a changed file is a new config (its name carries a hash of its text) that
  a service update rotates in.
* A published port has no host address in Swarm: it listens at docker_gwbridge's binding
  address, 0.0.0.0 unless that bridge was made with 127.0.0.1 before `docker swarm init` (the
  backend does so when it makes the swarm: stack/swarm/gateway.py; the header below shows how
  by hand). Ports use `mode: host` (the node running the task listens) and services
  `endpoint_mode: dnsrr`, because the ingress routing mesh and virtual IPs are IPVS, which
  not every kernel has (this machine's has no CONFIG_IP_VS). So a published service's
  update stops the old task before the new one binds the port (stop-first). Only the
  entry point, the servers the course's clients read and the app's tasks are published,
  and each one asks for a password (SCRAM, requirepass) or serves only the app's HTTP API
  (admin calls need the token). An app task has no fixed port (one service, N tasks): its
  engine picks one per task, which the backend reads from the task's status.
* Images are not built by `docker stack deploy`: build them first
  (`python -m stack.docker build`), on every node of a multi-node swarm (or
  `docker save` / `docker load` them there).
* Every service but the app is placed on a manager (`node.role == manager`): its
  host-mode port must be on the node the clients reach, and its volume stays on one
  node. On a multi-node swarm only the app's tasks spread over the nodes.
* Shard servers (`postgres.shards` > 0) are one service each, `postgres-shard-N`, as in the
  compose project: one task, its own data volume (`shard-N-data`), its own postgresql.conf
  config and the shared pg_hba.conf and schema configs, the primary's password secrets, and
  its port from the block (base+41..48), published like the other PostgreSQL servers: the
  resharding mover (stack.resharding) and the lessons' clients reach each one from the host.
  The app's tasks reach them by service name on the overlay (the app config's shard DSNs).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..docker.compose import APP_MEMORY, HEALTH_TIMING, IMAGES, _Dumper, data_volume, data_volumes, image_name
from ..docker.config import (CONF_DIR, PGDATA, RUN_DIR, render_nginx_conf, render_pg_hba,
                             render_pgbouncer_ini, render_postgres_conf, render_redis_conf, render_schema_sql,
                             render_shard_schema_sql)
from ..plan import shard_services
from ..ports import Ports
from ..render.addressing import INTERNAL_PORTS
from ..render.nginx import render_upstream_conf
from ..topology import Topology

HEADER = """\
# ScaleLab's stack for Docker Swarm. Rendered by stack.swarm.stackfile from the default
# Topology: edits are overwritten (`python -m stack.swarm render` rewrites it, and
# tests/test_swarm_render.py fails when it drifts from the renderer).
#
# From the repository's root (inside stack/, `python -m` would import stack/docker for docker-py):
#   .venv/bin/python -m stack.swarm gateway-bridge    # before the swarm exists: ports on 127.0.0.1 only
#   docker swarm init --advertise-addr 127.0.0.1
#   .venv/bin/python -m stack.docker build                  # the images, on each node
#   .venv/bin/python -m stack.docker.runtime init stack/docker/conf/topology.json stack/docker/run
#   docker stack deploy --resolve-image never -c stack/swarm-stack.yml scalelab   # local images
#   curl http://127.0.0.1:18080/users/1
#   docker service scale scalelab_app=6                     # nginx follows the tasks within ~2 s
#   docker stack rm scalelab
#
# Without that docker_gwbridge (stack/swarm/gateway.py), Swarm publishes on every interface.
"""
PUBLISHED = ("nginx", "postgres-primary", "postgres-replica", "pgbouncer", "redis")
SERVICES = ("postgres-primary", "postgres-replica", "redis", "pgbouncer", "app", "nginx")


def is_published(service: str) -> bool:
    """Whether `service` has a fixed published port: PUBLISHED, and every shard server (postgres-shard-N)."""
    return service in PUBLISHED or service.startswith("postgres-shard-")


def services_of(topology: Topology) -> list[str]:
    """The Swarm services a topology runs, in start order: the shard servers after the replica."""
    names = [n for n in SERVICES if n != "pgbouncer" or topology.pgbouncer.enabled]
    at = names.index("postgres-replica") + 1
    return names[:at] + shard_services(topology) + names[at:]


def published_services(topology: Topology) -> list[str]:
    return [n for n in services_of(topology) if is_published(n)]
# A task reads its config from a writable copy of the seed secret: a secret cannot change, and
# a live change (TTL, pools) is a new file pushed into every task (stack.swarm.tasks), not a restart.
APP_CONFIG = "/tmp/scalelab/config.json"
APP_DOCKERFILE = Path(__file__).resolve().parents[1] / "docker" / "images" / "app.Dockerfile"


def app_command() -> list[str]:
    """The app image's CMD, read from its Dockerfile: one definition of how a replica starts."""
    text = APP_DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^CMD (\[.*?\])\s*$", text, re.M)
    if not match:
        raise ValueError(f"{APP_DOCKERFILE}: no CMD [...] line (the app service's command comes from it)")
    return json.loads(match.group(1))


def app_entrypoint() -> list[str]:
    # `$$`: the stack file is interpolated by `docker stack deploy`; the task's shell sees `$@`.
    copy = f"mkdir -p {APP_CONFIG.rsplit('/', 1)[0]} && cp {SECRETS['app_config'][1]} {APP_CONFIG} && exec \"$$@\""
    return ["sh", "-c", copy, "app-entry", *app_command()]


# nginx reads its upstream from a writable file that starts as a copy of the deployed config
# (Swarm mounts configs read-only), so the backend can rewrite it in the running task.
NGINX_UPSTREAM = f"{CONF_DIR}/nginx/upstream.conf"
NGINX_SEED = f"{CONF_DIR}/nginx-seed/upstream.conf"


def upstream_conf(topology: Topology, tasks: list[tuple[int, str]] | None = None) -> str:
    """nginx's upstream. Without `tasks` (the deployed seed, and the stack file a learner deploys by
    hand): one server line, `tasks.app`, which nginx expands to every task's address when it loads
    its config; weights cannot apply to it. With them ((slot, overlay address) of each running app
    task): one line per task, in slot order, with the weight of its slot (app-N has weights[N-1]):
    what the backend writes into the running nginx. Each task must be a server of its own for
    `hash ... consistent` too: nginx places a server's points on its ring by the server's name, so
    the tasks behind one `tasks.app` line all shared the same points, and a joining task moved most
    keys instead of its share."""
    port = INTERNAL_PORTS["app"]
    if not tasks:
        one = topology.with_changes(replicas=1, weights=None)
        return render_upstream_conf(one, address=lambda _index: f"tasks.app:{port}", source="stack.swarm.stackfile")
    ordered = sorted(tasks)
    # Slots can have gaps after a scale-down ({1, 2, 4}), and mid-update two tasks can share a slot:
    # each task gets its own slot's weight, and a slot beyond the weights (a task about to go) 1.
    weights = topology.balancer.weights or ()
    per_task = tuple(weights[slot - 1] if slot <= len(weights) else 1 for slot, _ in ordered)
    shaped = topology.with_changes(replicas=len(ordered), weights=per_task)
    return render_upstream_conf(shaped, address=lambda index: f"{ordered[index - 1][1]}:{port}",
                                source="stack.swarm.backend (live: the running tasks' addresses)")


def task_addresses(tasks: list[dict], network: str) -> list[tuple[int, str]]:
    """(slot, address on `network`) of each task (Swarm's task list entries), without the prefix length."""
    found = []
    for task in tasks:
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == network and attachment.get("Addresses"):
                found.append((task["Slot"], attachment["Addresses"][0].split("/")[0]))
    return found


def config_files(topology: Topology) -> dict[str, tuple[str, str]]:
    """Swarm configs: name -> (path relative to stack/, target path in the container)."""
    conf = "docker/conf"
    shards = {}
    for index, service in enumerate(shard_services(topology), start=1):
        shards[f"shard_{index}_conf"] = (f"{conf}/{service}/postgresql.conf", f"{CONF_DIR}/postgres/postgresql.conf")
    if shards:    # one pg_hba.conf and one empty schema for every shard server (the same text)
        shards["shard_hba"] = (f"{conf}/postgres-shard-1/pg_hba.conf", f"{CONF_DIR}/postgres/pg_hba.conf")
        shards["shard_schema"] = (f"{conf}/postgres-shard-1/schema.sql", f"{CONF_DIR}/postgres/schema.sql")
    return {
        "nginx_conf": (f"{conf}/nginx/nginx.conf", f"{CONF_DIR}/nginx/nginx.conf"),
        "nginx_upstream": (f"{conf}/swarm/upstream.conf", NGINX_SEED),
        "primary_conf": (f"{conf}/postgres-primary/postgresql.conf", f"{CONF_DIR}/postgres/postgresql.conf"),
        "primary_hba": (f"{conf}/postgres-primary/pg_hba.conf", f"{CONF_DIR}/postgres/pg_hba.conf"),
        "primary_schema": (f"{conf}/postgres-primary/schema.sql", f"{CONF_DIR}/postgres/schema.sql"),
        "replica_conf": (f"{conf}/postgres-replica/postgresql.conf", f"{CONF_DIR}/postgres/postgresql.conf"),
        "replica_hba": (f"{conf}/postgres-replica/pg_hba.conf", f"{CONF_DIR}/postgres/pg_hba.conf"),
        "pgbouncer_ini": (f"{conf}/pgbouncer/pgbouncer.ini", f"{CONF_DIR}/pgbouncer/pgbouncer.ini"),
        "redis_conf": (f"{conf}/redis/redis.conf", f"{CONF_DIR}/redis/redis.conf"),
        **shards,
    }


def config_texts(topology: Topology) -> dict[str, str]:
    """The text of each config, by name (what a rotation compares)."""
    texts = {"nginx_conf": render_nginx_conf(), "nginx_upstream": upstream_conf(topology),
             "primary_conf": render_postgres_conf(topology, "primary"), "primary_hba": render_pg_hba(),
             "primary_schema": render_schema_sql(),
             "replica_conf": render_postgres_conf(topology, "replica"), "replica_hba": render_pg_hba(),
             "pgbouncer_ini": render_pgbouncer_ini(topology), "redis_conf": render_redis_conf(topology)}
    for index, service in enumerate(shard_services(topology), start=1):
        texts[f"shard_{index}_conf"] = render_postgres_conf(topology, service[len("postgres-"):])
    if topology.postgres.shards:
        texts["shard_hba"] = render_pg_hba()
        texts["shard_schema"] = render_shard_schema_sql()
    return texts


# Files holding passwords (written by stack.docker.runtime into docker/run/): name -> (file, target).
SECRETS = {
    "app_config": ("app/config.json", f"{RUN_DIR}/app/config.json"),
    "postgres_password": ("postgres/postgres_password", f"{RUN_DIR}/postgres/postgres_password"),
    "app_password": ("postgres/app_password", f"{RUN_DIR}/postgres/app_password"),
    "pgbouncer_userlist": ("pgbouncer/userlist.txt", f"{RUN_DIR}/pgbouncer/userlist.txt"),
    "redis_auth": ("redis/auth.conf", f"{RUN_DIR}/redis/auth.conf"),
    "redis_password": ("redis/password", f"{RUN_DIR}/redis/password"),   # for its health check
}


def runtime_texts(topology: Topology, secrets: dict, shards="topology") -> dict[str, str]:
    """The text of each secret, by name (stack.docker.config renders them). `shards`: the app
    config's shard routing when not the topology's (a phase of stack.resharding)."""
    from ..docker.config import runtime_files
    files = runtime_files(topology, secrets, shards)
    return {name: files[rel] for name, (rel, _target) in SECRETS.items()}


def secret_names(topology: Topology, secrets: dict | None = None) -> dict[str, str]:
    """Swarm secret names: the app's seed config carries a hash (it changes with the topology,
    and a secret cannot); the passwords never change, so their names are fixed."""
    names = {name: name for name in SECRETS}
    if secrets is not None:
        names["app_config"] = _versioned("app_config", runtime_texts(topology, secrets)["app_config"])
    return names


def _versioned(name: str, text: str) -> str:
    """Configs are immutable: a new text gets a new name, which a service update rotates in."""
    return f"{name}_{hashlib.sha256(text.encode()).hexdigest()[:10]}"


# Swarm reports a task running (and a scale or update done) only after its first passing check,
# which comes `interval` after the start: 2 s instead of compose's 5 s keeps a scale near 5 s,
# at ~0.025 of a core per container for the checks (each one a `docker exec`).
SWARM_HEALTH = {**HEALTH_TIMING, "interval": "2s"}


# Swarm's own restart defaults, written out: `docker stack deploy` leaves RestartPolicy unset and
# an update that sends the engine's defaulted spec back (`docker service update`, docker-py)
# fills it in, which changes the task template and so replaces every running task. (A 2 s delay
# was tried: a killed server's new task then bound its port while up() ran; see held_ports.)
RESTART_POLICY = {"condition": "any", "delay": "5s", "max_attempts": 0}
# The app's tasks publish no fixed port (each one's is picked by its engine), so that race cannot
# happen to them: a crashed replica is back 4 s sooner.
APP_RESTART_POLICY = {**RESTART_POLICY, "delay": "1s"}

# An update counts as done only `monitor` after its last new task runs (Swarm's default 5 s: the
# window in which a failing task pauses it). A task runs here only after its first passing health
# check, so 1 s is the wait that is left; every scale, config rotation or CPU limit is 4 s shorter.
UPDATE_MONITOR = "1s"


def _health(*test: str) -> dict:
    return {"test": ["CMD", *test], **SWARM_HEALTH}


def _service(topology: Topology, name: str, images: dict, configs: dict, secret_of: dict) -> dict:
    ports = Ports(topology.base_port)

    def use_configs(*names):
        return [{"source": configs[n], "target": config_files(topology)[n][1], "mode": 0o444} for n in names]

    def use_secrets(*names):
        return [{"source": secret_of[n], "target": SECRETS[n][1], "mode": 0o444} for n in names]

    kind = "app" if name == "app" else ("postgres" if name.startswith("postgres") or name == "pgbouncer" else name)
    svc: dict = {"image": images[kind]}
    deploy: dict = {"replicas": 1, "update_config": {"order": "stop-first", "monitor": UPDATE_MONITOR}}
    if name.startswith("postgres-"):
        role = name.split("-")[1]        # primary, replica, shard (a primary of its own, no standby)
        svc["command"] = ["postgres-entry", role]
        if role == "shard":
            svc["configs"] = use_configs(f"shard_{name.rsplit('-', 1)[1]}_conf", "shard_hba", "shard_schema")
        else:
            svc["configs"] = use_configs(f"{role}_conf", f"{role}_hba",
                                         *(["primary_schema"] if role == "primary" else []))
        svc["secrets"] = use_secrets("postgres_password", "app_password")
        svc["volumes"] = [f"{data_volume(name)}:{PGDATA}"]
        svc["healthcheck"] = _health("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(INTERNAL_PORTS["postgres"]))
        svc["stop_signal"] = "SIGINT"
        svc["stop_grace_period"] = "15s"
    elif name == "pgbouncer":
        svc["command"] = ["pgbouncer", f"{CONF_DIR}/pgbouncer/pgbouncer.ini"]
        svc["configs"] = use_configs("pgbouncer_ini")
        svc["secrets"] = use_secrets("pgbouncer_userlist")
        svc["healthcheck"] = _health("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(INTERNAL_PORTS["pgbouncer"]),
                                     "-d", "scalelab", "-U", "app")
        svc["stop_grace_period"] = "5s"
    elif name == "redis":
        svc["configs"] = use_configs("redis_conf")
        svc["secrets"] = use_secrets("redis_auth", "redis_password")
        svc["healthcheck"] = _health("redis-health")
        svc["stop_grace_period"] = "5s"
    elif name == "nginx":
        svc["configs"] = use_configs("nginx_conf", "nginx_upstream")
        # The image's CMD (nginx-start), after copying the seed upstream where nginx reads it; beside
        # it nginx-follow-tasks, which reloads a seed-running nginx when tasks come and go (a scale
        # by hand: nobody else would). Started from a subshell, so that init adopts it: a child of
        # this shell would become a child of the nginx master (the exec), and nginx-reload waits
        # for every child of the master to be a new worker.
        svc["entrypoint"] = ["sh", "-c", f"cp {NGINX_SEED} {NGINX_UPSTREAM} && (nginx-follow-tasks &) && exec nginx-start"]
        svc["healthcheck"] = _health("http-health", str(INTERNAL_PORTS["nginx"]), "/nginx-health")
        svc["stop_grace_period"] = "5s"
        svc["stop_signal"] = "SIGQUIT"      # graceful: in-flight requests finish
    else:   # the app: the article's deploy block
        svc["entrypoint"] = app_entrypoint()
        # app-1, app-2 ...: the names every backend's replicas answer with (X-Replica).
        svc["environment"] = {"SCALELAB_REPLICA": "app-{{.Task.Slot}}", "SCALELAB_APP_CONFIG": APP_CONFIG}
        svc["secrets"] = use_secrets("app_config")
        svc["healthcheck"] = _health("http-health", str(INTERNAL_PORTS["app"]), "/health")
        svc["stop_grace_period"] = "8s"
        limits: dict = {}
        if topology.app.cpu_quota is not None:
            limits["cpus"] = f"{topology.app.cpu_quota:g}"
        limits["memory"] = APP_MEMORY
        deploy = {"replicas": topology.app.replicas, "resources": {"limits": limits},
                  "update_config": {"order": "start-first", "parallelism": 2, "monitor": UPDATE_MONITOR}}
    svc["init"] = True
    if is_published(name):
        svc["ports"] = [{"target": INTERNAL_PORTS["postgres" if name.startswith("postgres") else name],
                         "published": ports.of(name), "protocol": "tcp", "mode": "host"}]
    else:
        # Each app task on a port of its node that the engine picks (host mode, no published port):
        # the course asks one replica for its /metrics or a profile; the engine reports the port.
        svc["ports"] = [{"target": INTERNAL_PORTS["app"], "protocol": "tcp", "mode": "host"}]
    svc["networks"] = ["default"]
    # DNS answers with the tasks' own addresses: a virtual IP needs the kernel's IPVS, which
    # some kernels lack (this machine's has no CONFIG_IP_VS: VIPs and the ingress mesh time out).
    deploy["endpoint_mode"] = "dnsrr"
    if name != "app":
        # On the manager, the engine the backend talks to: a host-mode published port listens on the
        # node that runs the task, and the course's clients reach 127.0.0.1; a data volume is local
        # to one node, so PostgreSQL must not move. Only the app's tasks spread over the nodes.
        deploy["placement"] = {"constraints": ["node.role == manager"]}
    deploy["restart_policy"] = dict(APP_RESTART_POLICY if name == "app" else RESTART_POLICY)
    svc["deploy"] = deploy
    return svc


def swarm_model(topology: Topology | None = None, images: dict | None = None, secrets: dict | None = None,
                only: tuple[str, ...] | None = None) -> dict:
    """The stack file as a dict. `secrets` (the generated values) versions the app's seed
    config; `only` keeps those services (a partial deploy: `docker stack deploy` leaves
    the others as they are), with just the configs and secrets they use."""
    topology = topology or Topology()
    images = images or {name: image_name(name) for name in IMAGES}
    texts = config_texts(topology)
    configs = {name: _versioned(name, text) for name, text in texts.items()}
    secret_of = secret_names(topology, secrets)
    names = services_of(topology)
    if only is not None:
        known = (*SERVICES, *shard_services(topology))
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"only={unknown[0]!r} is not allowed: services are {', '.join(known)}")
        names = [n for n in names if n in only]
    services = {name: _service(topology, name, images, configs, secret_of) for name in names}
    used_configs = {c["source"] for s in services.values() for c in s.get("configs", [])}
    used_secrets = {c["source"] for s in services.values() for c in s.get("secrets", [])}
    paths = config_files(topology)
    return {
        "version": "3.8",
        "services": services,
        "networks": {"default": {"driver": "overlay", "attachable": True}},
        "volumes": {volume: {} for volume in data_volumes(topology)},
        "configs": {configs[n]: {"file": f"./{path}"} for n, (path, _target) in paths.items()
                    if configs[n] in used_configs},
        "secrets": {secret_of[n]: {"file": f"./docker/run/{path}"} for n, (path, _target) in SECRETS.items()
                    if secret_of[n] in used_secrets},
    }


def render_swarm_stack(topology: Topology | None = None, **kwargs) -> str:
    import yaml
    return HEADER + yaml.dump(swarm_model(topology, **kwargs), Dumper=_Dumper, sort_keys=False,
                              default_flow_style=False, width=110)


def repository_files(topology: Topology | None = None) -> dict[str, str]:
    """What the repository keeps for Swarm, relative to stack/: the stack file and its upstream
    (for the default topology; another one for a copy on other ports)."""
    topology = topology or Topology()
    return {"swarm-stack.yml": render_swarm_stack(topology),
            "docker/conf/swarm/upstream.conf": upstream_conf(topology)}
