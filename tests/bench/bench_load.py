"""Benchmark stack.load against wrk and its own open-loop schedule. Not a pytest test.

    .venv/bin/python tests/bench/bench_load.py --url http://127.0.0.1:21000

1. Closed loop, side by side with wrk, through nginx to ONE app replica
   (server-bound): wrk and stack.load alternate `--rounds` times with the same
   connections, path and duration; the ratio is ours / wrk over all rounds.
   Start the stack with replicas=1 for this (see --help).
2. Open loop at --rate (5,000 req/s) for --open-duration (10 s): p99 send lag
   (goal <= 5 ms), achieved rate, latency, generator CPU.
3. Little's law: N = 1..4 replicas with K = 4 slots and S = 20 ms of I/O,
   measured against N*K/S (goal: within 5%), generator CPU (goal <= 15% of a core).

Without --url it starts its own stack (state in a temp dir, ports from 23100)
and stops it at the end.

Prints one JSON object with the figures. The machine's load average is
included: other work on the box moves these numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stack.load import LoadSpec, run_load  # noqa: E402


def run_wrk(url: str, connections: int, duration_s: int, threads: int) -> dict:
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration_s + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)),
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
            "non_2xx": int(errors.group(1)) if errors else 0}


def closed_side_by_side(args) -> dict:
    rounds = []
    for _ in range(args.rounds):
        wrk = run_wrk(args.url + args.path, args.connections, args.duration, args.wrk_threads)
        ours = run_load(LoadSpec(url=args.url, mode="closed", connections=args.connections,
                                 duration_s=args.duration, path=args.path))
        rounds.append({
            "wrk_rps": round(wrk["rps"], 1), "wrk_p99_ms": wrk["p99_ms"], "wrk_non_2xx": wrk["non_2xx"],
            "ours_rps": round(ours.throughput_rps, 1), "ours_p99_ms": ours.latency.percentile_ms(99),
            "ours_errors": ours.error_count, "ours_cpu": ours.cpu,
            "replicas_seen": sorted(ours.replicas), "ratio": round(ours.throughput_rps / wrk["rps"], 3)})
    wrk_total = sum(r["wrk_rps"] for r in rounds)
    ours_total = sum(r["ours_rps"] for r in rounds)
    replicas = sorted({name for r in rounds for name in r["replicas_seen"]})
    return {"path": args.path, "connections": args.connections, "duration_s": args.duration,
            "wrk_threads": args.wrk_threads, "rounds": rounds,
            "wrk_rps_mean": round(wrk_total / len(rounds), 1),
            "ours_rps_mean": round(ours_total / len(rounds), 1),
            "ratio": round(ours_total / wrk_total, 3),
            "ratio_median": sorted(r["ratio"] for r in rounds)[len(rounds) // 2], "goal_ratio": 0.9,
            "replicas_seen": replicas,
            "note": None if len(replicas) == 1 else "expected exactly one replica behind nginx"}


def open_loop(args) -> dict:
    """The open loop at a fixed rate, Poisson and evenly spaced arrivals side by side."""
    return {kind: _open_loop(args, kind) for kind in ("poisson", "uniform")}


def _open_loop(args, arrivals: str) -> dict:
    r = run_load(LoadSpec(url=args.open_url or args.url, mode="open", rate=args.rate,
                          duration_s=args.open_duration, path=args.path, arrivals=arrivals))
    lag = r.send_lag
    return {"url": r.url, "arrivals": arrivals, "rate": args.rate, "duration_s": args.open_duration, "sent": r.sent,
            "send_rps": round(r.send_rps, 1), "throughput_rps": round(r.throughput_rps, 1),
            "send_lag_ms": {"p50": lag.percentile_ms(50), "p99": lag.percentile_ms(99),
                            "p99_9": lag.percentile_ms(99.9), "max": lag.max_ms()},
            "goal_send_lag_p99_ms": 5.0,
            "latency_ms": {k: v for k, v in r.latency.summary().items() if k != "count"},
            "errors": r.errors, "pool_waits": r.pool_waits, "cpu": r.cpu,
            "generator_bottleneck": r.generator_bottleneck, "warnings": r.warnings,
            "worst_interval_send_lag_p99_ms": max((s.send_lag_p99_ms or 0) for s in r.intervals)}


def littles_law(stack, seconds: float = 3.0) -> dict:
    rows = []
    for n in (1, 2, 3, 4):
        stack.apply(replicas=n, concurrency=4)
        r = run_load(LoadSpec(url=stack.status()["url"], mode="closed", connections=2 * n * 4,
                              duration_s=seconds, path="/work?kind=io&ms=20"))
        predicted = n * 4 / 0.020
        rows.append({"replicas": n, "predicted_rps": predicted, "measured_rps": round(r.throughput_rps, 1),
                     "error": round(abs(r.throughput_rps - predicted) / predicted, 4),
                     "generator_cpu": r.cpu, "errors": r.error_count})
    return {"rows": rows, "goal_error": 0.05, "goal_generator_cpu": 0.15,
            "met": all(row["error"] <= 0.05 and row["generator_cpu"] <= 0.15 for row in rows)}


def own_stack():
    """A stack of the benchmark's own, on ports that leave a course stack alone."""
    import tempfile
    from stack.local.backend import LocalStack
    from stack.topology import Topology
    root = tempfile.mkdtemp(prefix="scalelab-bench-load-")
    os.chmod(root, 0o711)
    stack = LocalStack(Path(root) / "state")
    stack.up(Topology(base_port=23100).with_changes(replicas=1))
    return stack, root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="nginx in front of ONE app replica (default: start a stack of our own)")
    p.add_argument("--path", default="/health")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=int, default=3, help="seconds per closed-loop run")
    p.add_argument("--rounds", type=int, default=5, help="wrk/ours alternations (the box is shared: more rounds, less noise)")
    p.add_argument("--wrk-threads", type=int, default=1, help="1: one core, like our single event loop")
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--open-duration", type=float, default=10)
    p.add_argument("--open-url", help="URL for the open loop (default: --url)")
    p.add_argument("--skip-closed", action="store_true")
    p.add_argument("--skip-open", action="store_true")
    p.add_argument("--skip-little", action="store_true")
    args = p.parse_args()
    if not args.skip_closed and not shutil.which("wrk"):
        p.error("wrk is not installed; use --skip-closed")
    stack = root = None
    if args.url is None:
        stack, root = own_stack()
        args.url = stack.status()["url"]
    began = time.time()
    summary = {"machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}}
    try:
        if not args.skip_closed:
            summary["closed_vs_wrk"] = closed_side_by_side(args)
        if not args.skip_open:
            summary["open_loop"] = open_loop(args)
        if stack is not None and not args.skip_little:
            summary["littles_law"] = littles_law(stack)
    finally:
        if stack is not None:
            stack.down()
            shutil.rmtree(root, ignore_errors=True)
    summary["machine"]["loadavg_after"] = os.getloadavg()
    busiest = max(summary["machine"]["loadavg_before"][0], summary["machine"]["loadavg_after"][0])
    if busiest > (os.cpu_count() or 1):
        summary["machine"]["note"] = (f"load average {busiest:.1f} on {os.cpu_count()} CPUs: other work "
                                      "competed for the CPUs, so these figures are noisy")
    summary["took_s"] = round(time.time() - began, 1)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
