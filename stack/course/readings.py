"""Readings taken from the running servers themselves, whatever backend runs them.

Lessons and live checks assert what the servers report, not what was configured:
each app replica answers /metrics with its work slots, pools and its own memory;
nginx's access log says whom it saw and which replica answered.
"""
from __future__ import annotations

import pandas as pd

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


# -- nginx's access log -----------------------------------------------------------------------------

def access_log_lines(stack, last: int | None = None) -> list[str]:
    """nginx's access log of this stack, line by line (the last `last` lines), on every backend:
    the stack reads it where its nginx writes it (a file in its state directory, or in its container)."""
    lines = stack.access_log().splitlines()
    return lines[-last:] if last else lines


def parse_access_line(line: str) -> dict | None:
    """One line of the stack's log_format (stack.render.nginx.LOG_FORMAT) as a dict, None if not one.

    `$upstream_addr` and `$upstream_response_time` hold one value per upstream tried
    ("a, b" after a retry); the last one answered. The last field names the replica that
    answered ("-": none; absent in lines written before it was logged: None)."""
    try:
        head, uri, tail = line.split('"', 2)
        msec, remote, method = head.split()
        rest = tail.split()
        status, request_time = rest[0], rest[-1]
        replica = None
        if len(rest) % 2 == 1:        # status, k upstreams, k times, request time, replica
            replica, request_time = rest[-1], rest[-2]
            rest = rest[:-1]
        tried = (len(rest) - 2) // 2
        if tried < 1 or len(rest) != 2 + 2 * tried:
            return None
        upstream, upstream_time = rest[tried], rest[2 * tried]
        return {"t": float(msec), "remote": remote, "method": method, "uri": uri, "status": int(status),
                "upstream": upstream.rstrip(","), "upstream_s": None if upstream_time == "-" else float(upstream_time),
                "request_s": float(request_time), "replica": None if replica in (None, "-") else replica}
    except ValueError:
        return None


def read_access_log(stack, since: float) -> pd.DataFrame:
    rows = []
    for line in access_log_lines(stack):
        row = parse_access_line(line)
        if row and row["t"] >= since:
            rows.append(row)
    return pd.DataFrame(rows, columns=["t", "remote", "method", "uri", "status", "upstream", "upstream_s",
                                       "request_s", "replica"])
