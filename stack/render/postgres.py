"""PostgreSQL settings for the primary and the streaming replica."""
from __future__ import annotations

from ..ports import HOST, Ports
from ..topology import Topology

# Small memory settings: the whole stack must fit a laptop (and 600 MB RSS).
_COMMON = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "shared_buffers": "32MB",
    "wal_level": "replica",
    "max_wal_senders": 5,
    "hot_standby": "on",
    "fsync": "on",
    "logging_collector": "off",
    "log_min_messages": "warning",
    # Per-statement counters (calls, time) the lessons ask the server for: how many reads
    # reached the database, and which statements cost the most (lessons 7 and 8).
    "shared_preload_libraries": "pg_stat_statements",
    # Dynamic shared memory as files in the data directory (pg_dynshmem), not in /dev/shm: a server
    # killed by a fault leaves its segments behind, and a data directory removed after that (purge,
    # a lost standby rebuilt) would leak them in /dev/shm for good (~1 MB each, measured here).
    "dynamic_shared_memory_type": "mmap",
}


def primary_settings(topology: Topology, ports: Ports) -> dict:
    spec = topology.postgres
    waits_for_replica = spec.synchronous_commit in ("remote_write", "remote_apply")
    return {**_COMMON, "port": ports.primary, "max_connections": spec.max_connections,
            "synchronous_commit": spec.synchronous_commit,
            # Only name the standby when commits must wait for it; else a missing standby would block writes.
            "synchronous_standby_names": "*" if waits_for_replica else ""}


def replica_settings(topology: Topology, ports: Ports) -> dict:
    spec = topology.postgres
    return {**_COMMON, "port": ports.replica, "max_connections": spec.max_connections,
            "recovery_min_apply_delay": f"{spec.replica_delay_ms}ms",
            "hot_standby_feedback": "on",
            # Reconnect to a restarted primary within a fraction of a second, not the default 5 s.
            "wal_retrieve_retry_interval": "200ms"}


def shard_settings(topology: Topology, ports: Ports, index: int) -> dict:
    """A shard server: a primary of its own with no standby (wal_level minimal), small and quick."""
    return {**_COMMON, "port": ports.shard(index), "max_connections": 100, "shared_buffers": "16MB",
            "wal_level": "minimal", "max_wal_senders": 0, "hot_standby": "off"}


def render_conf_lines(settings: dict) -> str:
    def literal(value) -> str:
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"
    return "".join(f"{key} = {literal(value)}\n" for key, value in settings.items())


def render_hba() -> str:
    """Password (SCRAM) authentication over loopback only; no `trust`."""
    return (f"host all all {HOST}/32 scram-sha-256\n"
            f"host replication all {HOST}/32 scram-sha-256\n")
