"""Lab 1: measuring. Percentiles from raw samples, throughput, Little's law predicted and measured."""
from __future__ import annotations

import math
import random

from ..registry import Verdict, check_definition
from ._cases import close, first_mismatch

LAB = "lab01"


def reference_percentile(samples, p):
    """Nearest rank: the smallest sample with at least p% of all samples at or below it."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _percentile_cases():
    rng = random.Random(1)
    lists = [[rng.expovariate(1 / 20) for _ in range(n)] for n in (1, 2, 10, 99, 100, 1000)]
    lists.append([5, 1, 4, 2, 3])  # unsorted on purpose
    return [(samples, p) for samples in lists for p in (50, 90, 99, 99.9, 100)]


@check_definition("percentile", LAB, "nearest-rank percentile of raw latency samples", hints=(
    "Sort a copy of the samples first: sorted(samples), not samples.sort().",
    "The p-th percentile is the value at rank ceil(p/100 * n), counting ranks from 1.",
    "ordered = sorted(samples); return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]",
))
def check_percentile(fn):
    cases = _percentile_cases()
    originals = [list(samples) for samples, _ in cases]
    verdict = first_mismatch(fn, cases, reference_percentile,
                             describe=lambda args: f"p={args[1]} of {len(args[0])} samples")
    if verdict.passed and any(list(s) != o for (s, _), o in zip(cases, originals)):
        return Verdict(False, "the caller's list unchanged", "it was sorted in place",
                       "Your function reordered the caller's samples: sort a copy.")
    return verdict


def reference_throughput(spans):
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    return len(spans) / (end - start)


@check_definition("throughput", LAB, "requests per second from (start, end) times", hints=(
    "Throughput counts completed requests per second of the whole window, not per request.",
    "The window runs from the earliest start to the latest end.",
    "return len(spans) / (max(e for _, e in spans) - min(s for s, _ in spans))",
))
def check_throughput(fn):
    rng = random.Random(2)
    cases = []
    for n in (10, 200, 5000):
        starts = sorted(rng.uniform(0, 10) for _ in range(n))
        cases.append(([(s, s + rng.uniform(0.01, 0.3)) for s in starts],))
    cases.append(([(0.0, 1.0), (0.5, 2.0)],))
    return first_mismatch(fn, cases, reference_throughput, describe=lambda args: f"{len(args[0])} requests")


def reference_capacity(replicas, concurrency, service_ms):
    return replicas * concurrency / (service_ms / 1000)


@check_definition("littles_law", LAB, "capacity predicted with Little's law", hints=(
    "Little's law: requests in the system = arrival rate x time each spends there (L = lambda W).",
    "At capacity every slot is busy: L = replicas x concurrency, and W = the service time in seconds.",
    "return replicas * concurrency / (service_ms / 1000)",
))
def check_littles_law(fn):
    cases = [(1, 4, 20), (4, 4, 20), (3, 16, 50), (8, 1, 5), (2, 10, 250)]
    return first_mismatch(fn, cases, reference_capacity, compare=lambda a, b: close(a, b, 1e-6),
                          describe=lambda a: f"replicas={a[0]}, concurrency={a[1]}, service_ms={a[2]}")


@check_definition("measured_capacity", LAB, "Little's law prediction confirmed on the live stack", hints=(
    "Predict before you measure: 2 replicas, 4 work slots each, 20 ms per request.",
    "Use your littles_law function with replicas=2, concurrency=4, service_ms=20.",
    "predicted = littles_law(2, 4, 20)   # 400 requests per second",
), needs_stack=True)
def check_measured_capacity(predicted):
    from ._live import closed_loop, shape_stack
    expected = reference_capacity(2, 4, 20)
    if not close(predicted, expected, 0.01):
        return Verdict(False, expected, predicted, "The prediction is not N x K / S for N=2, K=4, S=20 ms.")
    stack = shape_stack(replicas=2, concurrency=4, strategy="least_conn", weights=None, cpu_quota=None)
    # Twice as many clients as slots keeps every slot busy: the stack runs at capacity.
    result = closed_loop(stack, "/work?kind=io&ms=20", connections=16)
    measured = result.throughput_rps
    if result.error_count or abs(measured - predicted) > 0.1 * predicted:
        return Verdict(False, f"{predicted:g} req/s (within 10%)", round(measured, 1),
                       f"Measured {measured:.0f} req/s with {result.error_count} errors: "
                       f"check the stack (python -m stack status).")
    return Verdict(True, predicted, round(measured, 1),
                   f"Predicted {predicted:g} req/s, measured {measured:.0f} req/s on 2 replicas "
                   f"({abs(measured - predicted) / predicted:.1%} apart).")
