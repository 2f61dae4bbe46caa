"""Stack timings and memory, median of several runs. Not part of `make test`: run `make bench`.

    .venv/bin/python tests/bench/bench_stack.py [--runs 5] [--base-port 23000]

Prints one JSON object: cold up, warm up, scale 1 -> 4, strategy change to first
request served, and the whole default stack's memory (RSS and PSS).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from stack.local.backend import LocalStack
from stack.topology import Topology

TARGETS = {"cold_up_s": 3.0, "warm_up_s": 1.5, "scale_1_to_4_s": 2.0, "strategy_first_request_s": 0.3,
           "rss_mb": 600}


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--base-port", type=int, default=23000)
    args = parser.parse_args()
    base = Topology(base_port=args.base_port)
    samples: dict[str, list[float]] = {key: [] for key in TARGETS if key != "rss_mb"}
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
        finally:
            stack.down()
            shutil.rmtree(root, ignore_errors=True)
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in samples.items()),
              file=sys.stderr, flush=True)
    result = {key: {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                    "max": round(max(values), 3), "target": TARGETS[key],
                    "met": statistics.median(values) <= TARGETS[key]} for key, values in samples.items()}
    result["memory"] = {**memory, "target_rss_mb": TARGETS["rss_mb"], "met": memory["rss_mb"] <= TARGETS["rss_mb"]}
    result["runs"] = args.runs
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
