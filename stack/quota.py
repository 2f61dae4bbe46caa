"""Whether a backend can give one app replica a CPU quota (`app.cpu_quota`), and why not.

    support = stack.get_stack().cpu_quota_support()
    if support.available: ...            # lesson 2's vertical scaling with real CPU limits
    else: print(support.reason)          # ... or the concurrency model, said plainly

Local processes use Linux cgroups directly (stack.local.cpu_quota); the Docker and Swarm
backends ask the engine, which enforces `cpus:` with the same CFS quota when its kernel has one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import StackError


@dataclass(frozen=True)
class Support:
    available: bool
    layout: str          # "v2", "v1", "engine" or "none"
    reason: str          # why not, when not available

    def require(self) -> None:
        if not self.available:
            raise StackError(f"app.cpu_quota needs Linux cgroups with the cpu controller, and {self.reason}. "
                             f"Leave cpu_quota=None and model a replica's capacity with app.concurrency instead.")


def engine_support(client) -> Support:
    """What a Docker engine says of CPU limits (`docker info`: CpuCfsQuota)."""
    if client.info().get("CpuCfsQuota"):
        return Support(True, "engine", "")
    return Support(False, "engine", "this Docker engine reports no CPU CFS quota support (`docker info`: "
                                    "'No cpu cfs quota support'), so `cpus:` limits are not enforced")
