"""Lab 1: measuring. Percentiles from raw samples, throughput, Little's law predicted and measured."""
from __future__ import annotations

import math
import random

from ..registry import Verdict, check_definition
from ._cases import close, first_mismatch

LAB = "lab01"
IO_WORK = "/work?kind=io&ms={ms}"


def reference_percentile(samples, p):
    """Nearest rank: the smallest sample with at least p% of all samples at or below it."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _percentile_cases():
    rng = random.Random(1)
    lists = [[5, 1, 4, 2, 3]]   # small and unsorted on purpose: the first case shows the usual mistakes
    lists += [[rng.expovariate(1 / 20) for _ in range(n)] for n in (1, 2, 10, 99, 100, 1000)]
    return [(samples, p) for samples in lists for p in (50, 90, 99, 99.9, 100)]


PERCENTILE_TURNS = (
    (lambda s, p: s[max(1, math.ceil(p / 100 * len(s))) - 1],
     "Right rank, but of the unsorted list: rank the samples in sorted order (sort a copy)."),
    (lambda s, p: sorted(s)[min(len(s) - 1, math.ceil(p / 100 * len(s)))],
     "One rank too high: ranks count from 1, Python's indexes from 0."),
    (lambda s, p: sorted(s)[max(0, math.floor(p / 100 * len(s)) - 1)],
     "Rounded the rank down: nearest rank rounds p/100 x n UP."),
    (lambda s, p: sum(s) / len(s),
     "That is the mean: a percentile is one of the samples, picked by its rank."),
)


@check_definition("percentile", LAB, "nearest-rank percentile of raw latency samples", hints=(
    "A percentile reads the samples in sorted order: the p-th percentile is a sample with p% of all "
    "samples at or below it.",
    "Nearest rank: rank = p/100 x n rounded up, counting ranks from 1 (the smallest sample has rank 1). "
    "Sort a copy: the caller's list must keep its order.",
    "Worked example with other numbers: samples [9, 3, 7, 1], p = 75: sorted [1, 3, 7, 9], rank = "
    "ceil(0.75 x 4) = 3, so p75 = 7. For p = 10 the rank is ceil(0.4) = 1: the smallest sample.",
))
def check_percentile(fn):
    cases = _percentile_cases()
    originals = [list(samples) for samples, _ in cases]
    verdict = first_mismatch(fn, cases, reference_percentile, wrong_turns=PERCENTILE_TURNS,
                             describe=lambda args: f"p={args[1]} of {len(args[0])} samples")
    if verdict.passed and any(list(s) != o for (s, _), o in zip(cases, originals)):
        return Verdict(False, "the caller's list unchanged", "it was sorted in place",
                       "Your function reordered the caller's samples.",
                       hint="list.sort() sorts the caller's own list; sorted(...) returns a sorted copy.")
    return verdict


def reference_throughput(spans):
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    return len(spans) / (end - start)


THROUGHPUT_TURNS = (
    (lambda spans: len(spans) / sum(e - s for s, e in spans),
     "That divides by the time spent inside requests; requests overlap, so use the wall-clock window."),
    (lambda spans: len(spans) / (max(s for s, _ in spans) - min(s for s, _ in spans)),
     "The window ends when the last request ends, not when it starts."),
    (lambda spans: len(spans) / max(e for _, e in spans),
     "The window starts at the first start, not at time zero."),
)


@check_definition("throughput", LAB, "requests per second from (start, end) times", hints=(
    "Throughput counts finished requests per second of wall-clock time, not per request.",
    "Divide the number of requests by the length of the window, from the earliest start to the latest end.",
    "Worked example with other numbers: spans (0.0, 0.5), (0.2, 1.5), (1.0, 2.0) are 3 requests over "
    "2.0 - 0.0 = 2 s: 1.5 requests per second.",
))
def check_throughput(fn):
    rng = random.Random(2)
    cases = [([(1.0, 2.0), (1.5, 3.0), (2.0, 2.5)],)]
    for n in (10, 200, 5000):
        starts = sorted(rng.uniform(1, 10) for _ in range(n))
        cases.append(([(s, s + rng.uniform(0.01, 0.3)) for s in starts],))
    return first_mismatch(fn, cases, reference_throughput, wrong_turns=THROUGHPUT_TURNS,
                          describe=lambda args: f"{len(args[0])} requests")


def reference_capacity(replicas, concurrency, service_ms):
    return replicas * concurrency / (service_ms / 1000)


LITTLE_TURNS = (
    (lambda r, c, s: r * c / s, "Off by a factor of 1000: W must be in seconds, not milliseconds."),
    (lambda r, c, s: c / (s / 1000), "Every replica brings its own slots: count all of them."),
    (lambda r, c, s: r * c * s / 1000, "Upside down: solve L = lambda x W for lambda."),
)


@check_definition("littles_law", LAB, "capacity predicted with Little's law", hints=(
    "Little's law: requests inside = arrival rate x time each spends inside (L = lambda x W). "
    "Solve it for lambda, the rate.",
    "At capacity every work slot is busy, so L is the number of slots in the whole system, and W is the "
    "service time in seconds.",
    "Worked example with other numbers: 3 replicas x 2 slots, 50 ms each: L = 6, W = 0.05 s, "
    "lambda = 6 / 0.05 = 120 requests per second.",
))
def check_littles_law(fn):
    cases = [(1, 4, 20), (4, 4, 20), (3, 16, 50), (8, 1, 5), (2, 10, 250)]
    return first_mismatch(fn, cases, reference_capacity, compare=lambda a, b: close(a, b, 1e-6),
                          wrong_turns=LITTLE_TURNS,
                          describe=lambda a: f"replicas={a[0]}, concurrency={a[1]}, service_ms={a[2]}")


# Shapes the live check picks from: none is the lesson's own 2 x 4 x 20 ms example.
SHAPES = ((3, 2, 25), (2, 5, 20), (1, 8, 40), (3, 3, 30))
MEASURE_TOLERANCE = 0.12   # Little's law lands 2-6% under N x K / S here (HTTP and nginx time)


@check_definition("measured_capacity", LAB, "your Little's law, against the live stack", hints=(
    "The check shapes the stack (replicas, slots, service time), asks your littles_law for a prediction, "
    "then measures: pass it the function, not a number.",
    "If littles_law passes its own check, this one fails only when the measurement disagrees: read the "
    "measured figure in the message.",
), needs_stack=True)
def check_measured_capacity(fn):
    from ._live import closed_loop, inconclusive, replica_slots, shape_stack
    if not callable(fn):
        return Verdict(False, "your littles_law function", fn,
                       "Pass your function (check('measured_capacity', littles_law)): the check picks the "
                       "stack's shape, so a number cannot be right in advance.")
    replicas, slots, service_ms = random.SystemRandom().choice(SHAPES)
    predicted = fn(replicas, slots, service_ms)          # committed before anything is measured
    stack = shape_stack(replicas=replicas, concurrency=slots, strategy="least_conn", weights=None, cpu_quota=None)
    reported = replica_slots(stack)
    # Twice as many clients as slots keeps every slot busy: the stack runs at capacity.
    result = closed_loop(stack, IO_WORK.format(ms=service_ms), connections=2 * replicas * slots, seconds=2.5)
    if result is None:
        return inconclusive()
    measured = result.throughput_rps
    shape = (f"{len(reported)} replicas x {sorted(set(reported.values()))} slots (as the replicas report), "
             f"{service_ms} ms per request")
    if not isinstance(predicted, (int, float)) or isinstance(predicted, bool):
        return Verdict(False, "a number from littles_law", predicted, f"On {shape}, your function returned no number.")
    gap = abs(measured - predicted) / max(predicted, 1e-9)
    summary = (f"On {shape}: your littles_law predicted {predicted:,.0f} req/s, the stack measured "
               f"{measured:,.0f} req/s ({gap:.0%} apart; within {MEASURE_TOLERANCE:.0%} passes).")
    if result.error_count or gap > MEASURE_TOLERANCE:
        hint = _diagnose_little(fn)
        return Verdict(False, f"a prediction within {MEASURE_TOLERANCE:.0%} of the measurement",
                       round(predicted, 1), summary + (f" {result.error_count} requests failed." if result.error_count else ""),
                       hint=hint)
    return Verdict(True, round(measured, 1), round(predicted, 1), summary)


def _diagnose_little(fn) -> str | None:
    try:
        answers = [fn(*shape) for shape in SHAPES]
    except Exception:  # noqa: BLE001 - a diagnosis must never hide the verdict
        return None
    for mistake, hint in LITTLE_TURNS:
        if all(close(a, mistake(*shape)) for a, shape in zip(answers, SHAPES)):
            return hint
    if len(set(map(repr, answers))) == 1:
        return "Your function gives the same number for every shape: use its arguments."
    return None


TARGET = {"rps": 600, "replicas": 2, "service_ms": 20, "tolerance": 0.12}


@check_definition("target_capacity", LAB, "shape the live stack to a capacity you computed", hints=(
    "A replica's capacity is its work slots divided by the service time (Little's law); the stack has "
    "a knob for each: stack.apply(replicas=..., concurrency=...).",
    "With the replica count fixed, the capacity you need fixes the slots per replica: capacity = "
    "replicas x slots / service time, solved for slots.",
    "Worked example with other numbers: 450 req/s of 20 ms work on 3 replicas: each serves 150 req/s, "
    "and 150 x 0.020 s = 3 slots, so stack.apply(replicas=3, concurrency=3).",
), solution_state={"replicas": 2, "concurrency": 6, "strategy": "least_conn", "weights": None})
def check_target_capacity():
    from ._live import closed_loop, inconclusive, learner_stack, replica_slots
    t = TARGET
    stack = learner_stack()
    reported = replica_slots(stack)
    result = closed_loop(stack, IO_WORK.format(ms=t["service_ms"]), connections=max(2, 2 * sum(reported.values())),
                         seconds=2.5)
    if result is None:
        return inconclusive()
    measured = result.throughput_rps
    seen = f"{len(reported)} replicas answering with {sorted(reported.values())} slots measured {measured:,.0f} req/s"
    if len(reported) != t["replicas"]:
        return Verdict(False, f"exactly {t['replicas']} replicas", len(reported),
                       f"{seen}; the goal allows exactly {t['replicas']} replicas.",
                       hint="Change the slots per replica (concurrency), not the replica count.")
    if result.error_count or abs(measured - t["rps"]) > t["tolerance"] * t["rps"]:
        return Verdict(False, f"{t['rps']} req/s (within {t['tolerance']:.0%})", round(measured),
                       f"{seen}{f', {result.error_count} errors' if result.error_count else ''}; the goal is "
                       f"{t['rps']} req/s within {t['tolerance']:.0%}.")
    return Verdict(True, t["rps"], round(measured), f"{seen}: on target.")
