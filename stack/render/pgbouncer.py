"""PgBouncer configuration for the write path (app -> PgBouncer -> primary)."""
from __future__ import annotations

from pathlib import Path

from ..ports import HOST, Ports
from ..topology import Topology

DATABASE = "scalelab"


def render_pgbouncer_ini(topology: Topology, ports: Ports, directory: Path) -> str:
    d = Path(directory)
    spec = topology.pgbouncer
    return f"""; Rendered by stack.render.pgbouncer: edits are overwritten.
[databases]
{DATABASE} = host={HOST} port={ports.primary} dbname={DATABASE}

[pgbouncer]
listen_addr = {HOST}
listen_port = {ports.pgbouncer}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d / 'userlist.txt'}
admin_users = postgres
stats_users = postgres
pool_mode = {spec.mode}
default_pool_size = {spec.pool_size}
max_client_conn = {spec.max_client_conn}
server_login_retry = 1
ignore_startup_parameters = extra_float_digits,options
logfile = {d / 'pgbouncer.log'}
"""


def render_userlist(passwords: dict[str, str]) -> str:
    """userlist.txt: plain passwords so PgBouncer can answer SCRAM and log in upstream."""
    def quote(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'
    return "".join(f"{quote(user)} {quote(pw)}\n" for user, pw in sorted(passwords.items()))
