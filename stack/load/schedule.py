"""Open-loop pacing: when each request is *intended* to go out, whatever happened before it.

Latency is measured from the intended time, so a server stall also counts
against the requests that could not be sent on time (no coordinated omission).

Two arrival processes:
- "uniform": request i at i / rate (what wrk2, k6's constant-arrival-rate and
  vegeta do). Evenly spaced requests never collide, which hides queueing until
  the load is right at capacity.
- "poisson": independent exponential gaps with mean 1 / rate (Gatling's
  randomised open injection). Real clients arrive like this: bursts happen, so
  queues form well before 100% load, which is why capacity plans keep headroom.
Both are seeded, so a run repeats exactly.
"""
from __future__ import annotations

import math
import random

ARRIVALS = ("poisson", "uniform")


def intended_time(start: float, index: int, rate: float) -> float:
    """When request `index` (0-based) of a uniform schedule should be sent."""
    return start + index / rate


def total_requests(rate: float, duration_s: float) -> int:
    """How many requests a uniform run of `duration_s` at `rate` per second schedules.

    Request i is scheduled when i / rate < duration_s, so the count is
    ceil(rate * duration_s); the rounding guards against 0.1 * 30 = 3.0000000000000004.
    """
    return max(0, math.ceil(round(rate * duration_s, 9)))


def due_count(start: float, now: float, rate: float, total: int) -> int:
    """How many requests of a uniform schedule (counted from index 0) are due by `now`, capped at `total`."""
    if now < start:
        return 0
    return min(total, math.floor(round((now - start) * rate, 9)) + 1)


def delay_until(start: float, index: int, rate: float, now: float) -> float:
    """Seconds to wait before request `index` is due (0 when it already is)."""
    return max(0.0, intended_time(start, index, rate) - now)


class Arrivals:
    """The offsets (seconds from the start) at which requests are due, in order, lazily.

    `next_offset()` returns the next one, or None once the window of
    `duration_s` is over; a long run never holds its whole schedule in memory.
    """

    def __init__(self, kind: str, rate: float, duration_s: float, seed: int = 1):
        if kind not in ARRIVALS:
            raise ValueError(f"arrivals={kind!r} is not allowed: one of {', '.join(map(repr, ARRIVALS))}")
        self.kind, self.rate, self.duration_s = kind, rate, duration_s
        self._rng = random.Random(seed)
        self._index = 0
        self._total = total_requests(rate, duration_s) if kind == "uniform" else None
        self._offset = 0.0

    def next_offset(self) -> float | None:
        if self.kind == "uniform":
            if self._index >= self._total:
                return None
            offset = self._index / self.rate
        else:
            # The first request goes at the start (as in the uniform schedule), the rest after
            # exponential gaps: the arrivals of a Poisson process of this rate.
            if self._index:
                self._offset += self._rng.expovariate(self.rate)
            if self._offset >= self.duration_s:
                return None
            offset = self._offset
        self._index += 1
        return offset


def poisson_gaps(rate: float, count: int, seed: int = 1) -> list[float]:
    """`count` inter-arrival gaps of a seeded Poisson schedule (what the tests check statistically)."""
    arrivals = Arrivals("poisson", rate, float("inf"), seed)
    offsets = [arrivals.next_offset() for _ in range(count + 1)]
    return [b - a for a, b in zip(offsets, offsets[1:])]
