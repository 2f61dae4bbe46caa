"""nginx configuration: a fixed main file and an upstream file the reconciler rewrites."""
from __future__ import annotations

from pathlib import Path

from ..ports import HOST, Ports
from ..topology import Topology

# How each strategy is spelled inside an nginx upstream block.
STRATEGY_DIRECTIVES = {
    "round_robin": None,                        # nginx's default
    "least_conn": "least_conn;",
    "ip_hash": "ip_hash;",
    "consistent_hash": "hash $request_uri consistent;",
    "random_two": "random two least_conn;",
}

# One line per request: enough to attribute traffic to replicas without stub_status. The last
# field is the replica that answered, as it names itself (its X-Replica header; "-": none did):
# addresses differ by backend (loopback ports, container or task addresses), that name does not.
LOG_FORMAT = ('$msec $remote_addr $request_method "$request_uri" $status '
              '$upstream_addr $upstream_response_time $request_time $upstream_http_x_replica')


# In a container, nginx sees every client on the host as one address: Docker's port proxy (or
# Swarm's ingress) connects from its own. Like a balancer behind another proxy, it then takes the
# client's address from X-Forwarded-For, trusted only from private networks (where the proxy is);
# the course's clients from several addresses say which one they use (stack.load, ask_once).
PROXY_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


def server_block(listen: str, behind_proxy: bool = False) -> str:
    """The one server: a health check of nginx itself, everything else to the app replicas.
    `behind_proxy`: clients reach nginx through a port proxy (containers): see PROXY_NETWORKS."""
    real_ip = "".join(f"\n        set_real_ip_from {net};" for net in PROXY_NETWORKS) + \
        "\n        real_ip_header X-Forwarded-For;" if behind_proxy else ""
    return f"""    server {{
        listen {listen} backlog=4096;{real_ip}
        location = /nginx-health {{
            access_log off;
            return 200 "ok\\n";
        }}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection $scalelab_upstream_connection;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 2s;
        }}
    }}"""


def render_nginx_conf(directory: Path, port: int) -> str:
    """The main file. Everything that changes at run time lives in upstream.conf."""
    d = Path(directory)
    temp = "\n".join(f"    {kind}_temp_path {d / 'temp' / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Rendered by stack.render.nginx: edits are overwritten.
worker_processes 1;
daemon off;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;

events {{
    worker_connections 4096;
}}

http {{
{temp}
    log_format scalelab '{LOG_FORMAT}';
    access_log {d / 'access.log'} scalelab buffer=32k flush=1s;
    include {d / 'upstream.conf'};

{server_block(f"{HOST}:{port}")}
}}
"""


def render_upstream_conf(topology: Topology, ports: Ports | None = None, address=None,
                         source: str = "stack.render.nginx") -> str:
    """The upstream block plus the retry policy: the part a strategy, weight or scale change rewrites.

    Replica i listens at `address(i)` ("host:port"): by default 127.0.0.1 and its port
    from `ports` (the local backend); the Docker backend passes its service names.
    """
    if address is None:
        address = lambda index: f"{HOST}:{ports.app(index)}"  # noqa: E731
    balancer = topology.balancer
    # No `zone`: with one worker the balancer's state (round-robin position, connection
    # counts) is local anyway, so exact splits can be taught without shared memory.
    lines = [f"# Rendered by {source}: edits are overwritten.", "upstream app {"]
    directive = STRATEGY_DIRECTIVES[balancer.strategy]
    if directive:
        lines.append(f"    {directive}")
    weights = balancer.weight_list(topology.app.replicas)
    for index, weight in enumerate(weights, start=1):
        lines.append(f"    server {address(index)} weight={weight} "
                     f"max_fails={balancer.max_fails} fail_timeout={balancer.fail_timeout_s}s;")
    if balancer.keepalive:
        lines.append(f"    keepalive {balancer.keepalive};")
    lines.append("}")
    # keepalive=0 must mean a new connection per request on every nginx: since 1.29.7 an
    # upstream without the directive keeps 32 idle connections anyway, and older nginx
    # refuses `keepalive 0`. Asking the replica to close after each response works on all.
    # (An empty value sends no Connection header: the connection may be kept.)
    lines.append("map $scheme $scalelab_upstream_connection {")
    lines.append(f'    default "{"" if balancer.keepalive else "close"}";')
    lines.append("}")
    lines.append(f"proxy_next_upstream {' '.join(balancer.next_upstream)};")
    return "\n".join(lines) + "\n"
