"""PgBouncer configuration for the write path (app -> PgBouncer -> primary)."""
from __future__ import annotations

from pathlib import Path

from ..ports import HOST, Ports
from ..topology import Topology

DATABASE = "scalelab"


def render_pgbouncer_ini(topology: Topology, ports: Ports | None = None, directory: Path | None = None, *,
                         server: tuple[str, int] | None = None, listen: tuple[str, int] | None = None,
                         auth_file: str | None = None, source: str = "stack.render.pgbouncer") -> str:
    """pgbouncer.ini. By default for the local backend (127.0.0.1, `ports`, files in
    `directory`); the Docker backend passes its service address, listen address and paths."""
    server = server or (HOST, ports.primary)
    listen = listen or (HOST, ports.pgbouncer)
    auth_file = auth_file or str(Path(directory) / "userlist.txt")
    logfile = f"logfile = {Path(directory) / 'pgbouncer.log'}\n" if directory is not None else ""
    spec = topology.pgbouncer
    return f"""; Rendered by {source}: edits are overwritten.
[databases]
{DATABASE} = host={server[0]} port={server[1]} dbname={DATABASE}

[pgbouncer]
listen_addr = {listen[0]}
listen_port = {listen[1]}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
admin_users = postgres
stats_users = postgres
pool_mode = {spec.mode}
default_pool_size = {spec.pool_size}
max_client_conn = {spec.max_client_conn}
server_login_retry = 1
ignore_startup_parameters = extra_float_digits,options
{logfile}"""


def render_userlist(passwords: dict[str, str]) -> str:
    """userlist.txt: plain passwords so PgBouncer can answer SCRAM and log in upstream."""
    def quote(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'
    return "".join(f"{quote(user)} {quote(pw)}\n" for user, pw in sorted(passwords.items()))
