"""Lab 2: a capacity plan. How many replicas for a target rate, where vertical scaling stops."""
from __future__ import annotations

import math

from ...course.predictions import as_predicted
from ..registry import Verdict, check_definition
from ._cases import first_mismatch

LAB = "lab02"


def reference_replicas_needed(target_rps, concurrency, service_ms, max_utilization):
    per_replica = concurrency / (service_ms / 1000)
    return math.ceil(target_rps / (per_replica * max_utilization))


def _usable(c, s, u):
    return c / (s / 1000) * u


REPLICAS_TURNS = (
    (lambda t, c, s, u: round(t / _usable(c, s, u)), "Rounded to the nearest: a fraction of a replica still needs a whole one (round up)."),
    (lambda t, c, s, u: math.floor(t / _usable(c, s, u)) + 1, "floor + 1 is one too many when the division is exact: round up instead."),
    (lambda t, c, s, u: math.ceil(t / (c / (s / 1000))), "The plan ignores max_utilization: each replica may only run that fraction of its capacity."),
    (lambda t, c, s, u: math.ceil(t / (c / s * u)), "Off by a factor of 1000: service_ms is in milliseconds."),
)


@check_definition("replicas_needed", LAB, "replicas for a target rate at a utilisation cap", hints=(
    "One replica completes at most its slots divided by the service time per second (Little's law); "
    "a plan lets each replica run at only max_utilization of that.",
    "Divide the target by what one replica may carry, and round UP: a fraction of a replica is a whole replica.",
    "Worked example with other numbers: 500 req/s, 5 slots, 25 ms, at most 80%: one replica serves "
    "5 / 0.025 = 200 req/s, may carry 160; 500 / 160 = 3.1, so 4 replicas.",
))
def check_replicas_needed(fn):
    cases = [(400, 4, 20, 0.7), (100, 4, 20, 1.0), (1000, 16, 50, 0.8), (50, 1, 100, 0.5), (201, 4, 20, 1.0),
             (300, 4, 20, 0.5)]
    return first_mismatch(fn, cases, reference_replicas_needed, compare=lambda a, b: a == b,
                          wrong_turns=REPLICAS_TURNS,
                          describe=lambda a: f"target_rps={a[0]}, concurrency={a[1]}, service_ms={a[2]}, "
                                             f"max_utilization={a[3]}")


def reference_cpu_ceiling(cores, cpu_ms):
    return cores * 1000 / cpu_ms


CPU_TURNS = (
    (lambda cores, ms: 1000 / ms, "That is one core's worth: the machine has `cores` of them."),
    (lambda cores, ms: cores * ms / 1000, "Upside down: requests per second = CPU ms available per second / CPU ms per request."),
    (lambda cores, ms: cores / ms, "Units: a core gives 1000 ms of CPU per second, and cpu_ms is in milliseconds."),
)


@check_definition("cpu_ceiling", LAB, "the most a CPU-bound service can serve on a machine", hints=(
    "Each request needs cpu_ms of some core's time, whatever the number of replicas sharing the machine.",
    "A core gives 1000 ms of CPU each second; the machine gives cores times that. Divide by the CPU one request needs.",
    "Worked example with other numbers: 4 cores and 8 ms of CPU per request: 4 x 1000 / 8 = 500 requests per second.",
))
def check_cpu_ceiling(fn):
    cases = [(2, 5), (1, 10), (8, 2.5), (2, 20)]
    return first_mismatch(fn, cases, reference_cpu_ceiling, wrong_turns=CPU_TURNS,
                          describe=lambda a: f"cores={a[0]}, cpu_ms={a[1]}")


def reference_survive_one_failure(target_rps, per_replica_rps):
    return math.ceil(target_rps / per_replica_rps) + 1


SURVIVE_TURNS = (
    (lambda t, p: math.ceil(t / p), "That just meets the target: after one replica dies, the rest fall short."),
    (lambda t, p: math.floor(t / p) + 1, "floor + 1 only meets the target (and not when the division is exact): "
                                         "size for the load, then add the spare."),
    (lambda t, p: round(t / p) + 1, "Rounded to the nearest: a fraction of a replica still needs a whole one."),
    (lambda t, p: 2 * math.ceil(t / p), "Doubling survives the loss of half the replicas: more than needed for one."),
)


@check_definition("survive_one_failure", LAB, "replicas so that losing one still meets the target", hints=(
    "Size for the load first; then ask what is left after one replica dies.",
    "You need the smallest N such that N - 1 replicas still carry the target.",
    "Worked example with other numbers: 500 req/s at 150 per replica: 4 replicas carry 600 and 3 carry "
    "only 450, so 4 just meet it and 5 survive a loss.",
))
def check_survive_one_failure(fn):
    cases = [(400, 200), (401, 200), (1000, 150), (10, 100), (600, 150)]
    return first_mismatch(fn, cases, reference_survive_one_failure, compare=lambda a, b: a == b,
                          wrong_turns=SURVIVE_TURNS,
                          describe=lambda a: f"target_rps={a[0]}, per_replica_rps={a[1]}")


# Poisson arrivals at 300 req/s of 20 ms work, 4 slots per replica. Measured here (2 cores):
# p99 57 ms with 2 replicas (8 slots, 75% busy), 27 ms with 3, 23 ms with 4: a 40 ms target
# separates 2 from 3 with a margin either side, and the check measures N and N - 1.
PLAN = {"target_rps": 300, "concurrency": 4, "service_ms": 20, "p99_ms": 40, "seconds": 5.0}


def _p99(stack):
    from ._live import open_loop
    result = open_loop(stack, f"/work?kind=io&ms={PLAN['service_ms']}", rate=PLAN["target_rps"],
                       seconds=PLAN["seconds"], seed=300)
    return None if result is None else (result.latency_ms()["p99_ms"], result.error_count)


def _judged_p99(stack):
    """(p99 ms, errors, what was measured), or None when the generator was too busy to measure.

    A miss is measured once more and the better run counts: one stall of a busy machine (30-50 ms
    seen on Swarm) delays the ~15 requests that arrive during it, enough to decide the p99 of
    1500. Both counts the check measures get the same second chance."""
    first = _p99(stack)
    if first is None:
        return None
    if not first[1] and first[0] <= PLAN["p99_ms"]:
        return (*first, f"p99 {first[0]:.1f} ms, {first[1]} errors")
    again = _p99(stack)
    if again is None:
        return None
    best = min(first, again, key=lambda m: (m[1] > 0, m[0]))     # no errors first, then the lower p99
    return (*best, f"p99 {best[0]:.1f} ms, {best[1]} errors (the better of two runs: p99 {first[0]:.1f} ms with "
                   f"{first[1]} errors, {again[0]:.1f} ms with {again[1]} errors)")


@check_definition("capacity_plan", LAB, "the fewest replicas that meet the p99 target, on the live stack", hints=(
    "Near capacity, random arrivals queue: plan for a utilisation well below 100%, then test the plan.",
    "Your replicas_needed with a 70% cap gives a count; set it with stack.apply(replicas=...). The check "
    "measures your count and one fewer.",
    "Worked example with other numbers: 250 req/s of 40 ms work with 8 slots per replica is 200 req/s "
    "per replica; at a 70% cap that is 140, so 250 / 140 rounds up to 2 replicas.",
), solution_state={"replicas": 3, "concurrency": 4, "strategy": "least_conn", "weights": None, "cpu_quota": None})
def check_capacity_plan():
    from ._live import inconclusive, learner_stack, replica_slots
    p = PLAN
    stack = learner_stack()
    reported = replica_slots(stack)
    n = len(reported)
    if set(reported.values()) != {p["concurrency"]}:
        return Verdict(False, f"{p['concurrency']} slots per replica", sorted(reported.values()),
                       f"The replicas report {sorted(reported.values())} work slots; this plan keeps "
                       f"{p['concurrency']} per replica and changes only their number.",
                       hint=f"stack.apply(concurrency={p['concurrency']}), then choose the replica count.")
    measured = _judged_p99(stack)
    if measured is None:
        return inconclusive()
    p99, errors, said = measured
    seen = f"{n} replicas at {p['target_rps']} req/s (Poisson arrivals): {said}"
    seen += as_predicted("plan_p99_ms", " (you predicted {:.0f} ms)")
    if errors or p99 > p["p99_ms"]:
        return Verdict(False, f"p99 <= {p['p99_ms']} ms, no errors", f"p99 {p99:.1f} ms, {errors} errors",
                       f"{seen}: the target is missed.",
                       hint="Too few replicas: at this utilisation, random bursts queue. Add replicas until the "
                            "measured p99 meets the target." if n < 8 else None)
    if n > 1:
        stack.apply(replicas=n - 1)
        try:
            fewer = _judged_p99(stack)
        finally:
            stack.apply(replicas=n)
        if fewer is None:
            return inconclusive()
        if not fewer[1] and fewer[0] <= p["p99_ms"]:
            return Verdict(False, "the fewest replicas that meet the target", n,
                           f"{seen}; but {n - 1} replicas also met it ({fewer[2]}): the plan over-provisions.")
        seen += f"; with {n - 1}: {fewer[2]}"
    return Verdict(True, n, n, f"{seen}: {n} is the fewest that meets p99 <= {p['p99_ms']} ms.")
