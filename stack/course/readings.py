"""Readings taken from the running servers themselves (backend-neutral: through status() addresses).

Lessons and live checks assert what the servers report, not what was configured:
each app replica answers /metrics with its work slots, pools and its own memory.
"""
from __future__ import annotations

import json
import urllib.request


def replica_metrics(stack) -> dict[str, dict]:
    """{app replica name: its /metrics}, for every app replica the stack reports running."""
    out = {}
    for name, info in sorted(stack.status()["services"].items()):
        if name.startswith("app-") and info.get("state") == "running" and info.get("address"):
            with urllib.request.urlopen(f"http://{info['address']}/metrics", timeout=5) as resp:
                out[name] = json.load(resp)
    return out


def replica_slots(stack) -> dict[str, int]:
    """{app replica name: work slots}, as each running replica reports itself."""
    return {name: m["work"]["concurrency"] for name, m in replica_metrics(stack).items()}
