"""redis.conf for the cache (Valkey or Redis): no persistence, a password, the topology's memory policy."""
from __future__ import annotations

from ..topology import Topology


def render_redis_conf(topology: Topology, *, port: int, bind: str, directory: str, auth: str,
                      source: str = "stack.render.redis") -> str:
    """`auth` is the line that sets the password: `requirepass ...` (a private file) or
    `include <file>` (the password kept out of a file that reaches the repository)."""
    cache = topology.cache
    # Loopback only: protected mode on; in a container network: off (the password guards it).
    protected = "yes" if bind.startswith("127.") else "no"
    return (f"# Rendered by {source}: edits are overwritten.\n"
            f"port {port}\nbind {bind}\nprotected-mode {protected}\n"
            f"save \"\"\nappendonly no\ndaemonize no\ndir {directory}\n"
            f"maxmemory {cache.maxmemory_mb}mb\nmaxmemory-policy {cache.policy}\n"
            f"{auth}\n")
