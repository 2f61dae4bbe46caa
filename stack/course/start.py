"""Every lesson and lab begins from its own topology, whatever ran before it.

    lab = start("lesson03")      # first cell: brings the stack there, prints what it changed
    reset()                      # back to the starting topology of the last start(...)

The starting point is the article's defaults (Topology.from_env(): 4 app
replicas, least_conn, ...) plus the few changes a notebook needs; a learner
who left 1 replica and round-robin behind in lesson 2 finds lesson 3 as its
text describes it.
"""
from __future__ import annotations

import dataclasses

from .. import clients, get_stack
from . import machine
from ..topology import SECTIONS, Topology

# Departures from the defaults, per notebook. Absent: the defaults.
STARTING_CHANGES: dict[str, dict] = {
    # Lab 2 starts with too few replicas for its plan (2 of the 3 it needs): a check run before any
    # planning measures a missed p99 on any machine, where 4 (over-provisioned) could look like the
    # fewest on a machine busy with other work.
    "lab02": {"replicas": 2},
    # Lessons 4-5 read the database on every GET: no cache in front of it.
    "lesson04": {"ttl_s": 0},
    "lab04": {"ttl_s": 0, "replica_delay_ms": 200},
    "lesson05": {"ttl_s": 0},
    # Lab 5: eight replicas with the article's pools meet a server limit of 100, PgBouncer off.
    "lab05": {"ttl_s": 0, "replicas": 8, "concurrency": 256, "max_connections": 100, "pgbouncer.enabled": False},
    # Sharding: 4 shard servers on a consistent-hash ring; no cache (every read reaches a shard);
    # 2 app replicas leave the 2 cores to the databases.
    "lesson06": {"shards": 4, "shard_scheme": "consistent", "ttl_s": 0, "replicas": 2},
    "lab06": {"shards": 3, "shard_scheme": "consistent", "ttl_s": 0, "replicas": 2},
    # Lab 8 starts on a mystery stack; reset() puts the mystery back after a fix.
    "lab08": {"replicas": 3, "read_pool": 1, "strategy": "random_two", "ttl_s": 10, "pool_size": 5},
}

_current: list[str] = []


def starting_topology(name: str) -> Topology:
    return Topology.from_env().with_changes(**STARTING_CHANGES.get(name, {}))


def differences(old: Topology | None, new: Topology) -> list[str]:
    """'app.replicas 1 -> 4' for each field that differs (everything, when nothing ran)."""
    if old is None:
        return ["(nothing was running: started the stack)"]
    out = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(after):
            a, b = getattr(before, f.name), getattr(after, f.name)
            if a != b:
                out.append(f"{section}.{f.name} {a!r} -> {b!r}")
    return out


def start(name: str, progress=print):
    """Bring the stack to `name`'s starting topology (starting it if needed) and return it."""
    stack = get_stack()
    old = stack.applied() if stack.status()["running"] else None
    target = starting_topology(name)
    if old is not None and old.base_port != target.base_port:
        # A stack already runs on another port block (started with --base-port): keep its ports.
        target = dataclasses.replace(target, base_port=old.base_port)
    stack.up(target, progress=None if old is not None else progress)
    # Settled, not just started: after a PostgreSQL restart (max_connections, a crash healed) the
    # replicas' breakers send reads to the primary until their probes pass again, and a lesson's
    # first read must find the stack as its text describes it.
    running = [int(n.split("-")[1]) for n, info in stack.status()["services"].items()
               if n.startswith("app-") and info.get("state") == "running"]
    clients.wait_replicas_reconnected(stack, running)
    _current[:] = [name]
    changed = differences(old, target)
    if progress:
        progress(f"{name}: the stack is at its starting topology"
                 + (": " + "; ".join(changed) if changed else " (nothing to change)"))
        progress(f"entry point: {stack.status()['url']}")
        note = machine.busy_note()
        if note:
            progress(note)
    return stack


def reset(progress=print):
    """Back to the starting topology of the notebook that last called start()."""
    if not _current:
        raise RuntimeError("reset() knows no starting point yet: run the notebook's first cell, start(...), first")
    return start(_current[0], progress=progress)
