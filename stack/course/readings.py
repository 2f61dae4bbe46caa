"""Readings taken from the running servers themselves, whatever backend runs them.

Lessons and live checks assert what the servers report, not what was configured:
each app replica answers /metrics with its work slots, pools and its own memory.
"""
from __future__ import annotations

from .. import clients


def replica_metrics(stack) -> dict[str, dict]:
    """{app replica name: its /metrics}, for every app replica the stack reports running."""
    running = [name for name, info in stack.status()["services"].items()
               if name.startswith("app-") and info.get("state") == "running"]
    return {name: clients.metrics(stack, int(name.split("-")[1]))
            for name in sorted(running, key=lambda n: int(n.split("-")[1]))}


def replica_slots(stack) -> dict[str, int]:
    """{app replica name: work slots}, as each running replica reports itself."""
    return {name: m["work"]["concurrency"] for name, m in replica_metrics(stack).items()}
