"""Faults to inject into the running stack, the same on every backend.

    import stack
    stack.fault.kill("app-2")              # SIGKILL it and its children (docker kill)
    stack.fault.pause("postgres-replica")  # SIGSTOP: holds connections, answers nothing (docker pause)
    stack.fault.resume("postgres-replica")
    stack.fault.delay_replica(1500)        # the replica applies WAL 1.5 s late
    stack.up()                             # restarts whatever was killed

Each takes `stack=` (a LocalStack or DockerStack) and defaults to the one
`stack.up()` uses. An unknown service raises UnknownServiceError naming the
services that exist, and touches nothing. Lessons call these instead of
os.kill on a pid, so they run unchanged on Docker.
"""
from __future__ import annotations


def _target(stack):
    if stack is None:
        from . import get_stack
        return get_stack()
    return stack


def kill(service: str, stack=None) -> str:
    """Kill `service` as a crash would; `up()` heals it."""
    return _target(stack).kill(service)


def pause(service: str, stack=None) -> str:
    """Freeze `service` (SIGSTOP / docker pause) until resume()."""
    return _target(stack).pause(service)


def resume(service: str, stack=None) -> str:
    """Undo pause()."""
    return _target(stack).resume(service)


def delay_replica(ms: int, stack=None) -> list[str]:
    """Make the read replica apply changes `ms` late (0 restores it): a lagging replica."""
    return _target(stack).apply(replica_delay_ms=ms)
