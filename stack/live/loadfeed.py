"""The one place the dashboard touches the load generator (stack.load).

`run_load(spec, on_interval)` runs a `stack.load.LoadSpec` until it ends or the
task is cancelled, calling `on_interval(LoadInterval)` once per interval.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class LoadInterval:
    t: float                      # wall-clock time the interval ended (time.time())
    throughput_rps: float         # responses per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    replicas: dict[str, int] = field(default_factory=dict)   # responses per X-Replica
    replica_p99_ms: dict[str, float] = field(default_factory=dict)   # p99 per X-Replica


def normalise(snapshot) -> LoadInterval:
    """A LoadInterval from stack.load's IntervalSnapshot (or a dict with the same names).

    Stamped with the arrival time: the generator's clock counts from its own start,
    the dashboard's from the run's, and the callback comes at the interval's end.
    """
    get = snapshot.get if isinstance(snapshot, dict) else (lambda k, d=None: getattr(snapshot, k, d))
    errors = get("errors", 0)
    return LoadInterval(t=time.time(), throughput_rps=float(get("throughput_rps", 0.0) or 0.0),
                        p50_ms=get("p50_ms"), p95_ms=get("p95_ms"), p99_ms=get("p99_ms"),
                        errors=sum(errors.values()) if isinstance(errors, dict) else int(errors or 0),
                        replicas=dict(get("replicas", {}) or {}),
                        replica_p99_ms=dict(get("replica_p99_ms", {}) or {}))


async def run_load(spec, on_interval: Callable[[LoadInterval], None]):
    """Run `spec` to its end and return its LoadResult.

    Cancelling stops the load the way stack.load means it to be stopped
    (`LoadRun.stop()`: no new requests, in-flight ones finish), because
    cancelling its task directly would leave closed-loop workers running.
    """
    from ..load import start_load        # imported late: dashboards without load do not need it
    run = start_load(spec, on_interval=lambda snapshot: on_interval(normalise(snapshot)))
    finished = asyncio.ensure_future(run.result())
    try:
        return await asyncio.shield(finished)
    except asyncio.CancelledError:
        run.stop()
        await asyncio.wait({finished}, timeout=spec.timeout_s + 1)
        raise
