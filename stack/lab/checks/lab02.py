"""Lab 2: a capacity plan. How many replicas for a target rate, where vertical scaling stops."""
from __future__ import annotations

import math

from ..registry import Verdict, check_definition
from ._cases import first_mismatch

LAB = "lab02"


def reference_replicas_needed(target_rps, concurrency, service_ms, max_utilization):
    per_replica = concurrency / (service_ms / 1000)
    return math.ceil(target_rps / (per_replica * max_utilization))


@check_definition("replicas_needed", LAB, "replicas for a target rate at a utilisation cap", hints=(
    "One replica completes at most concurrency / service time requests per second.",
    "Plan to run each replica at no more than max_utilization of that, then round UP.",
    "math.ceil(target_rps / (concurrency / (service_ms / 1000) * max_utilization))",
))
def check_replicas_needed(fn):
    cases = [(400, 4, 20, 0.7), (100, 4, 20, 1.0), (1000, 16, 50, 0.8), (50, 1, 100, 0.5), (201, 4, 20, 1.0)]
    return first_mismatch(fn, cases, reference_replicas_needed, compare=lambda a, b: a == b,
                          describe=lambda a: f"target_rps={a[0]}, concurrency={a[1]}, service_ms={a[2]}, "
                                             f"max_utilization={a[3]}")


def reference_cpu_ceiling(cores, cpu_ms):
    return cores * 1000 / cpu_ms


@check_definition("cpu_ceiling", LAB, "the most a CPU-bound service can serve on a machine", hints=(
    "Each request needs cpu_ms of one core, whatever the number of replicas.",
    "A core gives 1000 ms of CPU per second.",
    "return cores * 1000 / cpu_ms",
))
def check_cpu_ceiling(fn):
    cases = [(2, 5), (1, 10), (8, 2.5), (2, 20)]
    return first_mismatch(fn, cases, reference_cpu_ceiling,
                          describe=lambda a: f"cores={a[0]}, cpu_ms={a[1]}")


def reference_survive_one_failure(target_rps, per_replica_rps):
    return math.ceil(target_rps / per_replica_rps) + 1


@check_definition("survive_one_failure", LAB, "replicas so that losing one still meets the target", hints=(
    "First find how many replicas just meet the target (round up).",
    "Then add the one you expect to lose: N + 1.",
    "return math.ceil(target_rps / per_replica_rps) + 1",
))
def check_survive_one_failure(fn):
    cases = [(400, 200), (401, 200), (1000, 150), (10, 100)]
    return first_mismatch(fn, cases, reference_survive_one_failure, compare=lambda a, b: a == b,
                          describe=lambda a: f"target_rps={a[0]}, per_replica_rps={a[1]}")


PLAN = {"target_rps": 300, "concurrency": 4, "service_ms": 20, "max_utilization": 0.7, "p99_ms": 60}


@check_definition("capacity_plan", LAB, "a capacity plan, verified on the live stack", hints=(
    "Use your replicas_needed with target 300 req/s, 4 slots, 20 ms, at most 70% utilisation.",
    "One replica serves 4 / 0.020 = 200 req/s; 70% of that is 140; 300 / 140, rounded up.",
    "plan = replicas_needed(300, 4, 20, 0.7)   # 3 replicas",
), needs_stack=True)
def check_capacity_plan(replicas):
    from ._live import open_loop, shape_stack
    p = PLAN
    expected = reference_replicas_needed(p["target_rps"], p["concurrency"], p["service_ms"], p["max_utilization"])
    if replicas != expected:
        return Verdict(False, expected, replicas, "That is not the smallest replica count under the utilisation cap.")
    stack = shape_stack(replicas=replicas, concurrency=p["concurrency"], strategy="least_conn",
                        weights=None, cpu_quota=None)
    result = open_loop(stack, f"/work?kind=io&ms={p['service_ms']}", rate=p["target_rps"])
    p99 = result.latency_ms()["p99_ms"]
    if result.error_count or p99 > p["p99_ms"]:
        return Verdict(False, f"p99 <= {p['p99_ms']} ms and no errors", f"p99 {p99} ms, {result.error_count} errors",
                       "The plan did not hold on the stack: is something else loading this machine?")
    return Verdict(True, expected, replicas,
                   f"{replicas} replicas served {p['target_rps']} req/s with p99 {p99:.1f} ms "
                   f"(target {p['p99_ms']} ms) and no errors.")
