"""Stack timings and memory, median of several runs. Not part of `make test`: run `make bench`.

    .venv/bin/python tests/bench/bench_stack.py [--runs 5] [--base-port 23000]

Prints one JSON object: cold up (a new state directory; the per-machine PostgreSQL template
already made, as after any first use), warm up, scale 1 -> 4, strategy change to first request
served, shards 0 -> 4 on a new state directory, resharding modulo 3 -> 4 (rows copied per
second), and the whole default stack's memory (RSS and
PSS). Beside them, anchors measured in the same run: the first `up` on a machine with an empty
cache (it makes the template), and a plain initdb + start + pg_basebackup (what a cold up cost
before templates), so the figures read as ratios on whatever machine runs this.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from stack.local import pg_template
from stack.local.backend import LocalStack
from stack.local.proc import spawn, stop, wait_until
from stack.topology import Topology

TARGETS = {"cold_up_s": 1.5, "warm_up_s": 1.5, "scale_1_to_4_s": 2.0, "strategy_first_request_s": 0.3,
           "first_shards_0_to_4_s": 3.0, "rss_mb": 600}


def fresh_state() -> Path:
    path = Path(tempfile.mkdtemp(prefix="scalelab-bench-"))
    os.chmod(path, 0o711)
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def get(port: int, path: str = "/health") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.headers["X-Replica"]


def stack_memory(stack: LocalStack) -> dict:
    procs = []
    for info in stack.status()["services"].values():
        if info["pid"]:
            root = psutil.Process(info["pid"])
            procs += [root, *root.children(recursive=True)]
    rss = sum(p.memory_info().rss for p in procs)
    pss = sum(p.memory_full_info().pss for p in procs)   # shares shared memory fairly between processes
    return {"processes": len(procs), "rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1)}


def plain_initdb_and_basebackup(port: int) -> float:
    """The anchor: what a cold up's PostgreSQL pair cost without a template (initdb, start,
    pg_basebackup of the running primary), on this machine, now."""
    root = fresh_state()
    stack = LocalStack(root / "state")
    stack.state.ensure()
    ctx = stack.context(Topology(base_port=port))
    pwfile = root / "pw"
    pwfile.write_text("anchor-password\n")
    ctx.run_as.own(root, pwfile)
    primary, standby = root / "primary", root / "standby"
    record = None
    started = time.perf_counter()
    try:
        pg_template.run_tool(ctx, "anchor", [ctx.bins.pg("initdb"), "-N", "-D", primary, "-A", "scram-sha-256",
                                             "-U", "postgres", "--pwfile", pwfile, "-E", "UTF8", "--locale=C"])
        _, record = spawn([str(ctx.bins.pg("postgres")), "-D", str(primary), "-c", f"port={port}",
                           "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
                          root / "anchor.log", ctx.run_as)
        wait_until(lambda: subprocess.run(
            [str(ctx.bins.pg("pg_isready")), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0,
            "anchor postgres", 30, record)
        pg_template.run_tool(ctx, "anchor", [ctx.bins.pg("pg_basebackup"), "--no-sync", "-h", "127.0.0.1",
                                             "-p", port, "-U", "postgres", "-D", standby, "-X", "stream",
                                             "-c", "fast"], env={"PGPASSWORD": "anchor-password"})
        return time.perf_counter() - started
    finally:
        stop(record, 2, timeout=15)
        shutil.rmtree(root, ignore_errors=True)


def first_up_on_an_empty_cache(base: Topology) -> float:
    root = fresh_state()
    os.environ["SCALELAB_CACHE"] = str(root / "cache")
    stack = LocalStack(root / "state")
    try:
        return timed(lambda: stack.up(base))
    finally:
        del os.environ["SCALELAB_CACHE"]
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--base-port", type=int, default=23000)
    args = parser.parse_args()
    base = Topology(base_port=args.base_port)
    samples: dict[str, list[float]] = {key: [] for key in TARGETS if key != "rss_mb"}
    reshard_rates: list[int] = []
    anchors = {"first_up_empty_cache_s": first_up_on_an_empty_cache(base),
               "plain_initdb_and_basebackup_s": []}
    memory = None
    for run in range(args.runs):
        root = fresh_state()
        stack = LocalStack(root / "state")
        try:
            samples["cold_up_s"].append(timed(lambda: stack.up(base)))
            get(args.base_port, "/users/1")
            time.sleep(1.0)
            if memory is None:
                memory = stack_memory(stack)
            stack.down()
            samples["warm_up_s"].append(timed(lambda: stack.up(base)))
            stack.apply(replicas=1)
            samples["scale_1_to_4_s"].append(timed(lambda: stack.apply(replicas=4)))
            # Strategy change: from the call until nginx answers a request under the new upstream.
            samples["strategy_first_request_s"].append(timed(
                lambda: (stack.apply(strategy="round_robin"), get(args.base_port))))
            stack.apply(strategy="least_conn")
            stack.down()
            shutil.rmtree(root / "state", ignore_errors=True)
            stack.up(base)
            samples["first_shards_0_to_4_s"].append(timed(lambda: stack.apply(shards=4)))
            stack.apply(shards=3, shard_scheme="modulo")
            stack.apply(shards=4)
            reshard_rates.append(stack.status()["resharding"]["rows_per_s"])
            anchors["plain_initdb_and_basebackup_s"].append(plain_initdb_and_basebackup(args.base_port + 90))
        finally:
            stack.down()
            shutil.rmtree(root, ignore_errors=True)
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in samples.items()),
              file=sys.stderr, flush=True)
    result = {key: {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                    "max": round(max(values), 3), "target": TARGETS[key],
                    "met": statistics.median(values) <= TARGETS[key]} for key, values in samples.items()}
    result["resharding_modulo_3_to_4_rows_per_s"] = {
        "median": statistics.median(reshard_rates), "min": min(reshard_rates), "max": max(reshard_rates),
        "target": 20_000, "met": statistics.median(reshard_rates) >= 20_000}
    result["memory"] = {**memory, "target_rss_mb": TARGETS["rss_mb"], "met": memory["rss_mb"] <= TARGETS["rss_mb"]}
    plain = statistics.median(anchors["plain_initdb_and_basebackup_s"])
    result["anchors"] = {"first_up_empty_cache_s": round(anchors["first_up_empty_cache_s"], 3),
                         "plain_initdb_and_basebackup_s": round(plain, 3),
                         "cold_up_over_plain_initdb_and_basebackup": round(result["cold_up_s"]["median"] / plain, 2)}
    result["runs"] = args.runs
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
