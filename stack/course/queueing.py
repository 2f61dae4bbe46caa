"""What queueing theory predicts for the stack's /work model, to plot beside what was measured.

A replica pool with c work slots, each request holding one for a fixed S ms,
first come first served, is an M/D/c queue when arrivals are Poisson (and a
D/D/c queue when they are evenly spaced). Instead of a closed formula for its
tail (there is none that is simple for M/D/c), `simulate_latency` replays the
*same* seeded arrival schedule the load generator sends through an ideal
c-slot server: queueing theory's answer for exactly those arrivals.
"""
from __future__ import annotations

import heapq

import numpy as np

from ..load.schedule import Arrivals


def simulate_latency(rate: float, slots: int, service_ms: float, duration_s: float,
                     arrivals: str = "poisson", seed: int = 1) -> list[float]:
    """Latency (ms) of every request of the schedule, through `slots` ideal FCFS servers."""
    schedule = Arrivals(arrivals, rate, duration_s, seed)
    service = service_ms / 1000
    free_at = [0.0] * slots          # when each slot next becomes free (a heap)
    latencies = []
    for t in iter(schedule.next_offset, None):
        start = max(t, heapq.heappop(free_at))
        heapq.heappush(free_at, start + service)
        latencies.append((start + service - t) * 1000)
    return latencies


def percentile(values: list[float], p: float) -> float:
    """Nearest rank, as the load generator's histograms report it."""
    return float(np.percentile(values, p, method="inverted_cdf"))
