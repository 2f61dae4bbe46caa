"""What live checks share: shape or read the learner's stack, then measure it honestly.

A live check asks the running servers, not the applied configuration: which app
replicas answer, and with how many work slots (each replica's /metrics). A
measurement the machine was too busy to make (the load generator fell behind)
is retried once, and then reported as inconclusive instead of failing the learner.
"""
from __future__ import annotations

from ... import get_stack
from ...course.readings import replica_slots  # noqa: F401 - the checks' way to ask the replicas
from ...load import LoadSpec, run_load
from ...topology import Topology
from ..registry import Verdict

BUSY = ("The machine was too busy to measure (the load generator itself fell behind), twice. "
        "Close other heavy programs, then run the check again.")


def shape_stack(**changes):
    """The learner's running stack (started if needed), changed as the check needs."""
    stack = get_stack()
    current = stack.applied() or Topology.from_env()
    stack.up(current.with_changes(**changes))
    return stack


def learner_stack():
    """The learner's stack as they left it (started with the defaults if nothing runs)."""
    stack = get_stack()
    if not stack.status()["running"]:
        stack.up(stack.applied() or Topology.from_env(), progress=None)
    return stack


def entry_url(stack) -> str:
    return stack.status()["url"]


# A check's verdict tolerates more generator lag than a benchmark (5 ms): latency is counted
# from the intended send time anyway, and the bands checks use are tens of milliseconds wide.
CHECK_MAX_SEND_LAG_MS = 10.0


def measure(stack, **spec):
    """One load run (LoadSpec fields); retried once if the generator was the bottleneck.

    Returns the result, or None when both runs were disturbed (say BUSY)."""
    spec.setdefault("max_send_lag_ms", CHECK_MAX_SEND_LAG_MS)
    load = LoadSpec(url=entry_url(stack), **spec)
    for _ in range(2):
        result = run_load(load)
        if not result.generator_bottleneck:
            return result
    return None


def inconclusive() -> Verdict:
    return Verdict(False, "a measurement", "the generator fell behind twice", BUSY, inconclusive=True,
                   hint="Nothing to change in your answer: run the same check again when the machine is quieter.")


def closed_loop(stack, path: str, connections: int, seconds: float = 2.0):
    return measure(stack, mode="closed", connections=connections, duration_s=seconds, path=path)


def open_loop(stack, path: str, rate: float, seconds: float = 3.0, seed: int = 1):
    return measure(stack, mode="open", rate=rate, duration_s=seconds, path=path, seed=seed)
