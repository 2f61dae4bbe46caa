"""What live checks share: bring the learner's stack to a shape, then measure it."""
from __future__ import annotations

from ... import get_stack
from ...load import LoadSpec, run_load
from ...topology import Topology


def shape_stack(**changes):
    """The learner's running stack (started if needed), changed as the check needs."""
    stack = get_stack()
    current = stack.applied() or Topology.from_env()
    stack.up(current.with_changes(**changes))
    return stack


def entry_url(stack) -> str:
    return stack.status()["url"]


def closed_loop(stack, path: str, connections: int, seconds: float = 2.0):
    return run_load(LoadSpec(url=entry_url(stack), mode="closed", connections=connections,
                             duration_s=seconds, path=path))


def open_loop(stack, path: str, rate: float, seconds: float = 3.0):
    return run_load(LoadSpec(url=entry_url(stack), mode="open", rate=rate, duration_s=seconds, path=path))
