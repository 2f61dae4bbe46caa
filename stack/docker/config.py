"""The configuration files of the compose project: pure functions, topology (and secrets) in, text out.

Two kinds of file, kept apart so that secrets never reach the repository:

* `project_files(topology)`: no secrets. Bind-mounted read-only from the project's
  `docker/conf/` into each container at /etc/scalelab/<service>/. The repository keeps
  the default topology's set beside stack/compose.yml; a DockerStack keeps its own in
  its state directory and rewrites them on a live change.
* `runtime_files(topology, secrets)`: what needs a password (the app's DSNs, PgBouncer's
  userlist, Redis' requirepass, the PostgreSQL passwords). Mounted at /run/scalelab/<service>/.
  A DockerStack writes them from its state directory; the standalone compose.yml has a
  one-shot `secrets-init` service write them into a volume (`python -m stack.docker.runtime`).

Inside the network every service listens on its usual port (INTERNAL_PORTS) and is
reached by its service name; the host reaches each one on 127.0.0.1 at the same
`Ports` offsets as the local backend.
"""
from __future__ import annotations

import json

from ..plan import app_name, shard_services
from ..render.addressing import IN_NETWORK, INTERNAL_PORTS
from ..render.app import app_config as render_app_config
from ..render.nginx import LOG_FORMAT, server_block
from ..render.nginx import render_upstream_conf as render_upstream
from ..render.pgbouncer import render_pgbouncer_ini as render_pgbouncer
from ..render.pgbouncer import render_userlist
from ..render.postgres import primary_settings, render_conf_lines, replica_settings, shard_settings
from ..render.redis import render_redis_conf as render_redis
from ..secrets import SECRET_NAMES
from ..topology import Topology

# Inside a container: where the rendered files and the runtime (secret) files appear.
CONF_DIR = "/etc/scalelab"
RUN_DIR = "/run/scalelab"
PGDATA = "/var/lib/postgresql/data"
NGINX_ACCESS_LOG = "/var/log/nginx/access.log"


# -- nginx -------------------------------------------------------------------------------
def render_nginx_conf() -> str:
    """The main file; everything a live change touches is in upstream.conf."""
    return f"""# Rendered by stack.docker.config: edits are overwritten.
user www-data;
worker_processes 1;
daemon off;
pid /run/nginx.pid;
error_log /dev/stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    log_format scalelab '{LOG_FORMAT}';
    # A file inside the container, buffered: at thousands of requests per second a log
    # line each through `docker logs` would cost more CPU than nginx itself.
    access_log {NGINX_ACCESS_LOG} scalelab buffer=32k flush=1s;
    include {CONF_DIR}/nginx/upstream.conf;

{server_block(str(INTERNAL_PORTS['nginx']), behind_proxy=True)}
}}
"""


def render_upstream_conf(topology: Topology) -> str:
    """The upstream block: each replica by its service name (app-1, app-2 ...) and weight."""
    return render_upstream(topology, address=lambda index: IN_NETWORK.hostport(app_name(index)),
                           source="stack.docker.config")


# -- PostgreSQL ----------------------------------------------------------------------------
_IN_CONTAINER = {"listen_addresses": "*", "port": INTERNAL_PORTS["postgres"],
                 "unix_socket_directories": "/var/run/postgresql",
                 "hba_file": f"{CONF_DIR}/postgres/pg_hba.conf"}


def postgres_settings(topology: Topology, role: str) -> dict:
    """The local backend's settings, with the container's own address, port and paths.
    `role`: "primary", "replica" or "shard-N"."""
    if role.startswith("shard-") and role[6:].isdigit():
        settings = shard_settings(topology, _NoPorts(), int(role[6:]))
    elif role == "primary":
        settings = primary_settings(topology, _NoPorts())
    elif role == "replica":
        settings = replica_settings(topology, _NoPorts())
        settings["primary_conninfo"] = (f"host=postgres-primary port={INTERNAL_PORTS['postgres']} "
                                        f"user=postgres application_name=replica")
        # Reconnect soon after the primary restarts (default 5 s).
        settings["wal_retrieve_retry_interval"] = "500ms"
    else:
        raise ValueError(f"role must be 'primary', 'replica' or 'shard-N', got {role!r}")
    settings.update(_IN_CONTAINER)
    return settings


class _NoPorts:
    """Stands in for Ports: the container's port is fixed (5432), set by _IN_CONTAINER."""
    primary = replica = INTERNAL_PORTS["postgres"]

    @staticmethod
    def shard(_index: int) -> int:
        return INTERNAL_PORTS["postgres"]


def render_postgres_conf(topology: Topology, role: str) -> str:
    return ("# Rendered by stack.docker.config: edits are overwritten.\n"
            f"# Included from the data directory's postgresql.conf ({role}).\n"
            + render_conf_lines(postgres_settings(topology, role)))


def render_pg_hba() -> str:
    """SCRAM passwords for every network client; `peer` for the entrypoint's own socket. No `trust`."""
    return ("# Rendered by stack.docker.config: edits are overwritten.\n"
            "local all         postgres           peer\n"
            "host  all         all       all      scram-sha-256\n"
            "host  replication all       all      scram-sha-256\n")


def render_schema_sql() -> str:
    """The same seeded users table as the local backend."""
    from ..local.postgres import SCHEMA   # host side only: the container reads the rendered file
    return "-- Rendered by stack.docker.config from stack.local.postgres.SCHEMA.\n" + SCHEMA.lstrip()


def render_shard_schema_sql() -> str:
    """A shard server's empty users table, as the local backend's (stack.resharding fills it)."""
    from ..local.postgres import SHARD_SCHEMA
    return "-- Rendered by stack.docker.config from stack.local.postgres.SHARD_SCHEMA.\n" + SHARD_SCHEMA.lstrip()


# -- PgBouncer and Redis -----------------------------------------------------------------
def render_pgbouncer_ini(topology: Topology) -> str:
    return render_pgbouncer(topology, server=("postgres-primary", INTERNAL_PORTS["postgres"]),
                            listen=("*", INTERNAL_PORTS["pgbouncer"]), auth_file=f"{RUN_DIR}/pgbouncer/userlist.txt",
                            source="stack.docker.config")


def render_redis_conf(topology: Topology) -> str:
    # The password: {RUN_DIR}/redis/auth.conf (generated, never in the repository).
    return render_redis(topology, port=INTERNAL_PORTS["redis"], bind="* -::*", directory="/tmp",
                        auth=f"include {RUN_DIR}/redis/auth.conf", source="stack.docker.config")


# -- the project's files -----------------------------------------------------------------
def project_files(topology: Topology) -> dict[str, str]:
    """Every non-secret file of the project, by path relative to the project directory."""
    conf = "docker/conf"
    return {
        f"{conf}/topology.json": json.dumps(topology.to_dict(), indent=2, sort_keys=True) + "\n",
        f"{conf}/nginx/nginx.conf": render_nginx_conf(),
        f"{conf}/nginx/upstream.conf": render_upstream_conf(topology),
        f"{conf}/postgres-primary/postgresql.conf": render_postgres_conf(topology, "primary"),
        f"{conf}/postgres-primary/pg_hba.conf": render_pg_hba(),
        f"{conf}/postgres-primary/schema.sql": render_schema_sql(),
        f"{conf}/postgres-replica/postgresql.conf": render_postgres_conf(topology, "replica"),
        f"{conf}/postgres-replica/pg_hba.conf": render_pg_hba(),
        f"{conf}/pgbouncer/pgbouncer.ini": render_pgbouncer_ini(topology),
        f"{conf}/redis/redis.conf": render_redis_conf(topology),
        **{f"{conf}/{shard}/{name}": text for shard in shard_services(topology)
           for name, text in (("postgresql.conf", render_postgres_conf(topology, shard[len("postgres-"):])),
                              ("pg_hba.conf", render_pg_hba()), ("schema.sql", render_shard_schema_sql()))},
    }


# -- files that hold secrets -------------------------------------------------------------
def app_config(topology: Topology, secrets: dict, shards="topology") -> dict:
    """The file every replica reads (stack.app.config.AppConfig), with in-network addresses.
    `shards`: a shard routing other than the topology's (a phase of stack.resharding)."""
    return render_app_config(topology, secrets, IN_NETWORK, shards=shards)


def runtime_files(topology: Topology, secrets: dict, shards="topology") -> dict[str, str]:
    """Files holding secrets, by path relative to the runtime directory (/run/scalelab)."""
    missing = [name for name in SECRET_NAMES if not secrets.get(name)]
    if missing:
        raise ValueError(f"secrets lack {', '.join(missing)}")
    return {
        "app/config.json": json.dumps(app_config(topology, secrets, shards), indent=2) + "\n",
        "postgres/postgres_password": secrets["postgres_password"] + "\n",
        "postgres/app_password": secrets["app_password"] + "\n",
        "pgbouncer/userlist.txt": render_userlist({"postgres": secrets["postgres_password"],
                                             "app": secrets["app_password"]}),
        "redis/auth.conf": f"requirepass {secrets['redis_password']}\n",
        "redis/password": secrets["redis_password"] + "\n",
    }
