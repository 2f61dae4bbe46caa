"""ScaleLab's live stack: app replicas behind nginx, PostgreSQL primary + streaming
replica, PgBouncer and Redis, described by one Topology and changed live.

    import stack
    stack.up()                        # starts (or re-attaches to) the default stack
    stack.apply(strategy="round_robin", replicas=2)
    stack.status()
    stack.fault.kill("app-2")         # faults by service name (see stack.fault); up() heals
    stack.down()
"""
from __future__ import annotations

import os

from . import fault
from .errors import (BinaryNotFoundError, PortInUseError, ServiceFailedError, StackError,
                     TopologyError, UnknownServiceError)
from .topology import Topology

__all__ = ["Topology", "scenario", "up", "down", "apply", "status", "get_stack", "fault", "StackError", "TopologyError",
           "BinaryNotFoundError", "PortInUseError", "ServiceFailedError", "UnknownServiceError"]

_stacks: dict = {}


def get_stack(state_dir=None, backend: str | None = None):
    """The stack for a state directory: backend "local" (processes, default), "docker" (a compose
    project) or "swarm" (a `docker stack` on Swarm mode)."""
    backend = backend or os.environ.get("SCALELAB_BACKEND", "local")
    key = (backend, str(state_dir))
    if key not in _stacks:
        if backend == "local":
            from .local.backend import LocalStack
            _stacks[key] = LocalStack(state_dir)
        elif backend == "docker":
            from .docker.backend import DockerStack
            _stacks[key] = DockerStack(state_dir)
        elif backend == "swarm":
            from .swarm.backend import SwarmStack
            _stacks[key] = SwarmStack(state_dir)
        else:
            raise StackError(f"backend={backend!r} is not available: allowed 'local', 'docker', 'swarm'")
    return _stacks[key]


def up(topology: Topology | None = None, progress=print, **changes):
    """Start the stack (or change it to `topology`); keyword changes apply on top."""
    stack = get_stack()
    if changes:
        topology = (topology or stack.applied() or Topology.from_env()).with_changes(**changes)
    return stack.up(topology or stack.applied() or Topology.from_env(), progress=progress)


def apply(progress=None, **changes):
    return get_stack().apply(progress=progress, **changes)


def down(purge: bool = False, progress=None):
    return get_stack().down(purge=purge, progress=progress)


def status() -> dict:
    return get_stack().status()


def scenario(name: str):
    """A mystery stack for lesson and lab 8 (see stack.scenarios): scenario("mystery-1").apply()."""
    from .scenarios import scenario as find
    return find(name)
