"""Open-loop pacing as pure functions of (start, rate, index, now).

Request i is *intended* to go out at start + i / rate, whatever happened to
the requests before it. Latency is measured from that intended time, so a
server stall also counts against the requests that could not be sent on time
(no coordinated omission).
"""
from __future__ import annotations

import math


def intended_time(start: float, index: int, rate: float) -> float:
    """When request `index` (0-based) should be sent."""
    return start + index / rate


def total_requests(rate: float, duration_s: float) -> int:
    """How many requests a run of `duration_s` at `rate` per second schedules.

    Request i is scheduled when i / rate < duration_s, so the count is
    ceil(rate * duration_s); the rounding guards against 0.1 * 30 = 3.0000000000000004.
    """
    return max(0, math.ceil(round(rate * duration_s, 9)))


def due_count(start: float, now: float, rate: float, total: int) -> int:
    """How many requests (counted from index 0) are due by `now`, capped at `total`.

    Everything whose intended time has passed goes out in one batch, which is
    what lets one scheduler keep thousands of requests per second on time.
    """
    if now < start:
        return 0
    return min(total, math.floor(round((now - start) * rate, 9)) + 1)


def delay_until(start: float, index: int, rate: float, now: float) -> float:
    """Seconds to wait before request `index` is due (0 when it already is)."""
    return max(0.0, intended_time(start, index, rate) - now)
