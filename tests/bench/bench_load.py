"""Benchmark stack.load against wrk and its own open-loop schedule. Not a pytest test.

    .venv/bin/python tests/bench/bench_load.py                  # its own stack (what `make bench` runs)
    .venv/bin/python tests/bench/bench_load.py --url http://127.0.0.1:21000

1. Closed loop, side by side with wrk, through nginx to 1 and to 4 app replicas:
   wrk and stack.load alternate `--rounds` times with the same connections,
   path and duration. Each round gives two ratios, ours / wrk: CPU per
   request (both processes' user + system time over the responses they got)
   and requests/s. Goals: CPU at most 1.5x wrk's, requests/s at least 0.9x
   wrk's with 4 replicas (where the servers need the CPU the generator takes).
   With --url only that stack is measured, as it is.
2. Open loop at --rate (5,000 req/s) for --open-duration (10 s), Poisson and
   evenly spaced arrivals to the replicas, and Poisson to nginx's own
   /nginx-health (the generator's part alone): p99 send lag (goal <= 5 ms),
   achieved rate, latency. Where the replicas cannot answer that rate on a
   shared machine, they take the CPU the generator needs to stay on time.
3. Little's law: N = 1..4 replicas with K = 4 slots and S = 20 ms of I/O,
   measured against N*K/S (goal: within 5%), generator CPU (goal <= 15% of a core).

Without --url it starts its own stack (state in a temp dir, ports from
--base-port) and stops it at the end.

Prints one JSON object: "ratios" first (the figures the goals are about, as
median and range over the rounds), then the details. The machine's load
average is included: other work on the box moves absolute numbers; ratios
measured side by side in one run move much less.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stack.load import LoadSpec, run_load  # noqa: E402

GOALS = {"cpu_per_request_vs_wrk": 1.5, "rps_vs_wrk_4_replicas": 0.9, "send_lag_p99_ms": 5.0}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, connections: int, duration_s: int, threads: int) -> dict:
    cpu_before = _children_cpu_s()
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", url],
                         capture_output=True, text=True, timeout=duration_s + 30).stdout
    cpu_s = _children_cpu_s() - cpu_before           # wrk's whole process, as it was waited for
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if not rps or not done:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)), "cpu_us_per_request": cpu_s / max(int(done.group(1)), 1) * 1e6,
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
            "non_2xx": int(errors.group(1)) if errors else 0}


def run_ours(url: str, connections: int, duration_s: int, path: str) -> dict:
    cpu_before = time.process_time()                 # the whole run: connects, loop and teardown too
    r = run_load(LoadSpec(url=url, mode="closed", connections=connections, duration_s=duration_s, path=path))
    cpu_s = time.process_time() - cpu_before
    return {"rps": r.throughput_rps, "cpu_us_per_request": cpu_s / max(r.responses, 1) * 1e6,
            "p99_ms": r.latency.percentile_ms(99), "errors": r.error_count,
            "bottleneck": r.generator_bottleneck, "replicas_seen": sorted(r.replicas)}


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def closed_side_by_side(args, url: str) -> dict:
    rounds = []
    for i in range(args.rounds):
        # Who goes first alternates, so a drift in the machine's other load favours neither.
        if i % 2:
            ours = run_ours(url, args.connections, args.duration, args.path)
        wrk = run_wrk(url + args.path, args.connections, args.duration, args.wrk_threads)
        if not i % 2:
            ours = run_ours(url, args.connections, args.duration, args.path)
        rounds.append({
            "wrk_rps": round(wrk["rps"], 1), "ours_rps": round(ours["rps"], 1),
            "wrk_cpu_us": round(wrk["cpu_us_per_request"], 1), "ours_cpu_us": round(ours["cpu_us_per_request"], 1),
            "rps_ratio": round(ours["rps"] / wrk["rps"], 3),
            "cpu_ratio": round(ours["cpu_us_per_request"] / wrk["cpu_us_per_request"], 3),
            "wrk_p99_ms": wrk["p99_ms"], "ours_p99_ms": ours["p99_ms"], "wrk_non_2xx": wrk["non_2xx"],
            "ours_errors": ours["errors"], "ours_bottleneck": ours["bottleneck"],
            "replicas_seen": ours["replicas_seen"]})
    return {"path": args.path, "connections": args.connections, "duration_s": args.duration,
            "wrk_threads": args.wrk_threads,
            "replicas_seen": sorted({name for r in rounds for name in r["replicas_seen"]}),
            "rps_vs_wrk": _spread([r["rps_ratio"] for r in rounds]),
            "cpu_per_request_vs_wrk": _spread([r["cpu_ratio"] for r in rounds]),
            "ours_cpu_us_per_request": _spread([r["ours_cpu_us"] for r in rounds]),
            "wrk_cpu_us_per_request": _spread([r["wrk_cpu_us"] for r in rounds]),
            "rounds": rounds}


def closed_by_replicas(args, stack) -> dict:
    """Side by side with wrk at each replica count (own stack), or on --url as it is."""
    if stack is None:
        return {"as_given": closed_side_by_side(args, args.url)}
    out = {}
    for n in args.replicas:
        stack.apply(replicas=n)
        out[f"replicas_{n}"] = closed_side_by_side(args, stack.status()["url"])
    return out


NGINX_OWN_PATH = "/nginx-health"      # answered by nginx itself: the server is not what limits the rate


def open_loop(args) -> dict:
    """The open loop at a fixed rate: Poisson and evenly spaced arrivals through to the
    replicas, and Poisson to nginx's own answer, where only the generator (and the
    machine it shares) can make it late."""
    runs = {"poisson": (args.path, "poisson"), "uniform": (args.path, "uniform"),
            "poisson_nginx_only": (NGINX_OWN_PATH, "poisson")}
    return {name: _open_loop(args, path, arrivals) for name, (path, arrivals) in runs.items()}


def _open_loop(args, path: str, arrivals: str) -> dict:
    r = run_load(LoadSpec(url=args.open_url or args.url, mode="open", rate=args.rate,
                          duration_s=args.open_duration, path=path, arrivals=arrivals))
    lag = r.send_lag
    return {"url": r.url, "path": path, "arrivals": arrivals, "rate": args.rate, "duration_s": args.open_duration,
            "sent": r.sent,
            "send_rps": round(r.send_rps, 1), "throughput_rps": round(r.throughput_rps, 1),
            "send_lag_ms": {"p50": lag.percentile_ms(50), "p99": lag.percentile_ms(99),
                            "p99_9": lag.percentile_ms(99.9), "max": lag.max_ms()},
            "goal_send_lag_p99_ms": GOALS["send_lag_p99_ms"],
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


def ratios(summary: dict) -> dict:
    """The figures the goals are about, gathered from the details."""
    out: dict = {"goals": GOALS}
    for name, closed in summary.get("closed_vs_wrk", {}).items():
        out[f"closed_{name}"] = {key: closed[key] for key in ("cpu_per_request_vs_wrk", "rps_vs_wrk",
                                                             "ours_cpu_us_per_request", "wrk_cpu_us_per_request")}
    for kind, run in summary.get("open_loop", {}).items():
        out[f"open_{kind}_{run['rate']:g}_per_s"] = {"send_lag_p99_ms": run["send_lag_ms"]["p99"],
                                                     "send_rps": run["send_rps"],
                                                     "throughput_rps": run["throughput_rps"], "cpu": run["cpu"]}
    return out


def own_stack(base_port: int):
    """A stack of the benchmark's own, on ports that leave a course stack alone."""
    import tempfile
    from stack.local.backend import LocalStack
    from stack.topology import Topology
    root = tempfile.mkdtemp(prefix="scalelab-bench-load-")
    os.chmod(root, 0o711)
    stack = LocalStack(Path(root) / "state")
    stack.up(Topology(base_port=base_port).with_changes(replicas=1))
    return stack, root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running stack's nginx, measured as it is (default: start a stack of our own)")
    p.add_argument("--base-port", type=int, default=23100, help="ports of our own stack")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 4], help="replica counts for the closed loop (own stack)")
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
        stack, root = own_stack(args.base_port)
        args.url = stack.status()["url"]
    began = time.time()
    summary = {"machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}}
    try:
        if not args.skip_closed:
            summary["closed_vs_wrk"] = closed_by_replicas(args, stack)
        if not args.skip_open:
            if stack is not None:
                stack.apply(replicas=4)              # the default topology
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
    print(json.dumps({"ratios": ratios(summary), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
