"""What the Docker (compose) and Swarm backends share: one engine client, the state directory,
the calls that only read what runs, and faults and reads on a service's container.

Each backend supplies `_service_containers(saved)`: {service name the course uses: the container's
listing entry} for what runs now (app-1 ... app-N; a Swarm task's container by its slot),
and `_up(topology, progress, check_images)`, which executes stack.plan. Both execute the plan's
RESHARD action with `_reshard` here; each supplies only how a routing reaches its app replicas.
"""
from __future__ import annotations

import shutil
from typing import Callable

from .. import clients, resharding
from ..errors import StackError, UnknownServiceError
from ..fault import Faults
from ..progress import Progress, quiet
from ..plan import Action, describe, services_for
from ..render.addressing import IN_NETWORK
from ..render.app import routing_for_phase
from ..shardmap import ShardMap
from ..quota import Support, engine_support
from ..topology import Topology
from .config import NGINX_ACCESS_LOG
from .engine import connect, exec_in
from .images import ensure_images
from .state import DockerState

# push(routing, expect): make every running app replica use `routing` (the app config's "shards",
# in-network DSNs; None: users on the primary) and return once each reports `expect`.
PushRouting = Callable[[dict | None, dict], None]


def refuse_other_base_port(old: Topology | None, new: Topology, running) -> None:
    if running and old and old.base_port != new.base_port:
        raise StackError(f"base_port={new.base_port} differs from the running stack's "
                         f"{old.base_port}: run down() first, then up() on the new port")


class EngineStack(Faults):
    backend = ""

    def __init__(self, state: DockerState, client=None):
        self.state = state
        self._client = client

    # -- the engine ----------------------------------------------------------------------------
    @property
    def client(self):
        """The docker SDK client; EngineUnavailableError (says what to do) when no engine answers."""
        if self._client is None:
            self._client = connect()
        return self._client

    def _service_containers(self, saved: dict) -> dict[str, dict]:
        raise NotImplementedError

    def _up(self, topology: Topology | None, progress: Progress | None, check_images: bool) -> list[str]:
        raise NotImplementedError

    # -- reading what runs ---------------------------------------------------------------------
    def cpu_quota_support(self) -> Support:
        """Whether `app.cpu_quota` works here: the engine enforces it (a CFS quota per container)."""
        return engine_support(self.client)

    def applied(self) -> Topology | None:
        """The topology the stack was last brought to, if any."""
        return Topology.from_state(self.state.load())

    def context(self, topology: Topology | None = None) -> clients.StackAccess:
        """Ports and secrets for talking to the running stack (stack.clients)."""
        topology = topology or self.applied() or Topology.from_env()
        return clients.StackAccess(topology, self.state.secrets())

    def build(self, progress: Progress | None = None, force: bool = False) -> dict[str, str]:
        """Build the images that are missing for the current sources (all with force=True)."""
        return ensure_images(self.client, progress or quiet, force=force)

    def _elsewhere(self, saved: dict) -> dict[str, str]:
        """{service: node} for what runs on another node than this engine's (only on a multi-node
        swarm): out of reach of this engine's container calls (logs, kill, pause)."""
        return {}

    def _refuse_elsewhere(self, saved: dict, service: str, action: str, instead: str) -> None:
        here = self._service_containers(saved)
        if service in here:       # (mid-update, a slot can run here and elsewhere: here wins)
            return
        node = self._elsewhere(saved).get(service)
        if node is not None:
            raise StackError(f"service {service!r} runs on node {node!r}, not on this engine's: {action} reaches "
                             f"only this engine's containers ({', '.join(sorted(here)) or 'none'}). {instead}")

    def logs(self, service: str, lines: int = 50) -> str:
        saved = self.state.load()
        self._refuse_elsewhere(saved, service, "reading logs",
                               f"`docker service logs {saved.get('stack')}_app` on a manager has every task's.")
        listing = self._service_containers(saved)
        if service not in listing:
            raise StackError(f"no log for service {service!r}: known services are "
                             f"{', '.join(sorted(listing)) or 'none yet'}")
        raw = self.client.api.logs(listing[service]["Id"], tail=lines, timestamps=False)
        return raw.decode(errors="replace").rstrip("\n")

    def access_log(self) -> str:
        """nginx's access log (stack.render.nginx.LOG_FORMAT), read inside its container."""
        saved = self.state.load()
        nginx = self._running(saved, "nginx", "read the access log of")
        return exec_in(self.client, nginx["Id"], ["cat", NGINX_ACCESS_LOG])

    # -- changing it ---------------------------------------------------------------------------
    def apply(self, progress: Progress | None = None, **changes) -> list[str]:
        """Change some fields of the running topology (see Topology.with_changes)."""
        current = self.applied() or Topology.from_env()
        # A topology change keeps the images the stack runs; up() is what picks up new sources.
        return self._up(current.with_changes(**changes), progress, check_images=False)

    def up(self, topology: Topology | None = None, progress: Progress | None = None) -> list[str]:
        """Bring the stack to `topology` (default: what last ran, else the defaults).

        Returns what was done, one line per action; an empty list means it already matched.
        Images are rebuilt first if their sources changed. Every check that can refuse runs
        before the first change; if a change fails, what this call changed is put back
        (stack.rollback), or the error says what could not be.
        """
        return self._up(topology, progress, check_images=True)

    def down(self, purge: bool = False, progress: Progress | None = None) -> list[str]:
        """Remove what runs (`_take_down`); the data volumes stay. `purge=True` also deletes the data
        volumes and the state directory (secrets included). Returns what was done."""
        say = progress or quiet
        if not self.state.path.exists():
            return []
        with self.state.locked():
            saved = self.state.load()
            done = self._take_down(saved, purge, say)
            if saved:
                self.state.save({**saved, **self.DOWN_STATE})
        if purge:
            shutil.rmtree(self.state.path, ignore_errors=True)
            done.append(f"deleted {self.state.path}")
        return done

    DOWN_STATE = {"up": False}      # what the state file says once down() is done

    def _reshard(self, access, topology: Topology, action: Action, push: PushRouting) -> str:
        """Execute a RESHARD action: move users between the action's shard maps (stack.resharding,
        the mover on the host through `access`), with `push` making each phase's routing (copy, flip,
        done) the one every app replica uses before the next phase begins. Keeps the report for
        status()["resharding"]; returns the line the backend notes."""
        before, after = (ShardMap.from_dict(action.expect[k]) for k in ("from", "to"))
        secrets = self.state.secrets()

        def phase(read, write) -> None:
            push(*routing_for_phase(topology, secrets, IN_NETWORK, read, write))

        report = resharding.execute(access, before, after, phase)
        resharding.save_report(self.state.path, report)
        return describe(action, topology) + resharding.figures(report)

    def _take_down(self, saved: dict, purge: bool, say: Progress) -> list[str]:
        raise NotImplementedError

    # -- faults: kill/pause/resume (stack.fault.Faults) call this ------------------------------
    def _running(self, saved: dict, service: str, action: str) -> dict:
        """The container of `service`, checked against the saved topology first (a bad name never
        reaches the engine); StackError when it has none running."""
        topology = Topology.from_state(saved)
        known = services_for(topology) if topology and saved.get("up") else []
        if not isinstance(service, str) or service not in known:
            raise UnknownServiceError(service, sorted(known))
        self._refuse_elsewhere(saved, service, f"a fault ({action})",
                               "Pick a replica there, or drain that node (`docker node update --availability "
                               "drain NODE`) to see its tasks move.")
        c = self._service_containers(saved).get(service)
        if c is None or c["State"] not in ("running", "paused"):
            raise StackError(f"service {service!r} has no running container "
                             f"({c['State'] if c else 'none'}): nothing to {action}. up() starts it.")
        return c

    def _fault(self, action: str, service: str) -> str:
        c = self._running(self.state.load(), service, action)
        if action == "kill":          # (on Swarm, the orchestrator starts a new task in its place)
            self.client.api.kill(c["Id"], signal="SIGKILL")
        elif action == "pause" and c["State"] == "running":
            self.client.api.pause(c["Id"])
        elif action == "resume" and c["State"] == "paused":
            self.client.api.unpause(c["Id"])
        return f"{action} {service} (container {c['Id'][:12]})"
