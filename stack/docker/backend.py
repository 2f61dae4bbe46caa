"""The Docker backend: make a compose project's containers match a Topology, doing the least work.

    stack = DockerStack()
    stack.up()                            # builds missing images, starts every service healthy
    stack.apply(strategy="round_robin")   # rewrite upstream.conf + reload nginx, nothing else
    stack.apply(replicas=6)               # two new app containers, then reload nginx
    stack.apply(ttl_s=30)                 # rewrite the app config + POST /_admin/config per replica
    stack.down()                          # containers and network go; data volumes stay (purge=True: all)

The same public surface as stack.local.LocalStack, and the same addresses: every
service is published on 127.0.0.1 at the local backend's port offsets, so the
sampler, dashboards, lessons and tests work unchanged on either backend.

Containers are made with the docker SDK from the compose model
(stack.docker.compose), one per service (app-1 ... app-N, so nginx can weight
each by name). Each carries a hash of its spec: a container is recreated only
when its spec changed (image, mounts, environment, ports); config that can
change live is applied live:

    strategy, weights, keepalive, retries   upstream.conf + `nginx -s reload` (exec, graceful)
    replicas                                create/remove app containers around that reload
    ttl, pools, concurrency, read target    app config file + POST /_admin/config to each replica
    replica delay, synchronous_commit       settings file + pg_reload_conf()
    max_connections                         restart of the primary, then the replica
    PgBouncer mode/size                     pgbouncer.ini + SIGHUP
    Redis maxmemory/policy                  CONFIG SET
    CPU quota                               docker update (cgroup quota) on each replica
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from docker.errors import APIError, ImageNotFound, NotFound

from .. import clients, resharding
from ..errors import StackError
from ..files import run_parallel
from ..plan import (KINDS, PUSH_APP_CONFIG, RELOAD_NGINX, RELOAD_PGBOUNCER, RELOAD_POSTGRES, RESHARD,
                    RESTART_POSTGRES, SET_CPU_QUOTA, SET_REDIS, START, STOP, Action, describe, plan, reshard_action,
                    restore_plan, services_for, stop_rank, stop_stages)
from ..render.addressing import IN_NETWORK
from ..render.app import routing_as_move_starts
from ..ports import HOST, Ports, refuse_ports_in_use
from ..rollback import RollbackReport
from ..topology import Topology
from .compose import compose_model, container_spec, data_volumes, host_port, to_yaml
from .config import project_files
from .containers import Containers
from ..progress import Progress, quiet, recorder
from .engine_stack import EngineStack, refuse_other_base_port
from .images import ensure_images
from .runtime import write_runtime
from .state import DockerState
from .volumes import refuse_foreign_volumes, volume_labels

LIVE_SPEC_KEYS = ("cpu_period", "cpu_quota", "labels")   # changed with `docker update`, not a recreate
BACKEND_HEADER = """\
# The compose model this DockerStack runs (rendered by stack.docker.compose; informational:
# the containers are created from it with the docker SDK). Inspect with
#   docker compose -p {project} -f {path} ps|logs
"""


def project_name(topology: Topology) -> str:
    return f"scalelab-{topology.base_port}"


def _spec_hash(spec: dict) -> str:
    kept = {k: v for k, v in spec.items() if k not in LIVE_SPEC_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _index(service: str) -> int:
    return int(service.split("-")[1])


class DockerStack(EngineStack):
    backend = "docker"

    def __init__(self, state_dir: str | Path | None = None, client=None):
        super().__init__(DockerState(state_dir), client)

    def _containers(self, project: str) -> Containers:
        return Containers(self.client, project)

    def _list(self, project: str) -> dict[str, dict]:
        return self._containers(project).listing()

    def _service_containers(self, saved: dict) -> dict[str, dict]:
        return self._list(saved["project"]) if saved.get("project") else {}

    # -- reading what runs ------------------------------------------------------------------
    def status(self) -> dict:
        saved = self.state.load()
        topology = Topology.from_state(saved)
        ports = Ports(topology.base_port) if topology else None
        project = saved.get("project")
        services: dict = {}
        error = None
        listing: dict = {}
        if project:
            try:
                listing = self._list(project)
            except StackError as exc:
                error = str(exc)
        wanted = services_for(topology) if topology and saved.get("up") else []
        for service in sorted(set(listing) | set(wanted)):
            c = listing.get(service)
            state = c["State"] if c else ("unknown" if error else "missing")
            health = None
            if c and "(healthy)" in c["Status"]:
                health = "healthy"
            elif c and "(unhealthy)" in c["Status"]:
                health = "unhealthy"
            elif c and "health: starting" in c["Status"]:
                health = "starting"
            pid = None
            if c and state == "running":
                try:
                    pid = self.client.api.inspect_container(c["Id"])["State"]["Pid"] or None
                except (NotFound, APIError):   # it stopped or went meanwhile
                    pid = None
            services[service] = {"state": state, "health": health, "pid": pid,
                                 "container": c["Id"][:12] if c else None,
                                 "address": f"{HOST}:{host_port(service, ports)}" if ports else None}
        result = {"backend": self.backend, "state_dir": str(self.state.path),
                  "url": f"http://{HOST}:{ports.nginx}" if ports else None,
                  "running": any(s["state"] == "running" for s in services.values()),
                  "topology": topology.to_dict() if topology else None, "services": services,
                  "project": project, "resharding": resharding.last_report(self.state.path)}
        if error:
            result["error"] = error
        return result

    # -- changing it ------------------------------------------------------------------------
    def _images(self, saved: dict, check: bool, say) -> dict[str, str]:
        refs = saved.get("images")
        if not check and refs:
            try:
                for ref in refs.values():
                    self.client.images.get(ref)
                return refs
            except ImageNotFound:
                pass
        return ensure_images(self.client, say)

    def _up(self, topology: Topology | None, progress: Progress | None, check_images: bool) -> list[str]:
        say = progress or quiet
        if topology is not None and not isinstance(topology, Topology):
            raise StackError(f"topology must be a stack.Topology, got {type(topology).__name__}")
        self.client   # connect first: a clear error (what to do) when no engine answers
        with self.state.locked():
            saved = self.state.load()
            old = Topology.from_state(saved)
            new = topology or old or Topology.from_env()
            project = saved.get("project") or project_name(new)
            existing = self._list(project)
            running = {s for s, c in existing.items() if c["State"] in ("running", "paused")}
            refuse_other_base_port(old, new, running)
            refuse_ports_in_use(new, running)
            refuse_foreign_volumes(self.client, [f"{project}_{v}" for v in data_volumes(new)], self.state,
                                   owner=("scalelab.project", project))
            refs = self._images(saved, check_images, say)
            if not saved.get("project"):    # a first up that fails: down(purge=True) still finds what it made
                self.state.save({**saved, "backend": "docker", "project": project})
            done, note = recorder(say)

            live = old if (old is not None and running) else None
            try:
                self._reconcile(project, live, new, refs, existing, note)
            except BaseException as exc:
                report = self._roll_back(project, old, new, refs, running, say)
                report.attach(exc)
                raise
            self.state.save({"backend": "docker", "project": project, "topology": new.to_dict(),
                             "images": refs, "up": True})
            return done

    def _volumes(self, project: str) -> list:
        return self.client.volumes.list(filters={"label": f"scalelab.project={project}"})

    def _write_files(self, project: str, topology: Topology, refs: dict, shards="topology") -> dict:
        """Render every file for `topology` (`shards`: the app config's routing, when not the
        topology's); returns the compose model."""
        self.state.ensure()
        self.state.write_files(self.state.project_dir, project_files(topology))
        write_runtime(self.state.run_dir, topology, self.state.secrets(), shards=shards)
        model = compose_model(topology, standalone=False, images=refs, project=project)
        path = self.state.project_dir / "compose.yml"
        header = BACKEND_HEADER.format(project=project, path=path)
        self.state.write_files(self.state.project_dir, {"compose.yml": to_yaml(model, header)}, 0o600)
        return model

    def _ensure_network(self, project: str) -> str:
        name = f"{project}_default"
        if not self.client.networks.list(names=[name]):
            self.client.networks.create(name, driver="bridge", check_duplicate=True,
                                        labels={"com.docker.compose.project": project,
                                                "com.docker.compose.network": "default",
                                                "scalelab.project": project})
        return name

    def _ensure_volumes(self, project: str, model: dict) -> None:
        have = {v.name for v in self._volumes(project)}
        for volume in model["volumes"]:
            name = f"{project}_{volume}"
            if name not in have:
                self.client.volumes.create(name, labels=volume_labels(
                    self.state.secrets(), **{"com.docker.compose.project": project,
                                             "com.docker.compose.volume": volume, "scalelab.project": project}))

    def _specs(self, project: str, topology: Topology, model: dict, network: str) -> dict:
        specs = {}
        for service in services_for(topology):
            spec = container_spec(service, model["services"][service], project, self.state.project_dir, network)
            spec["labels"]["scalelab.spec"] = _spec_hash(spec)
            specs[service] = spec
        return specs

    def _reconcile(self, project: str, old: Topology | None, new: Topology, refs: dict,
                   existing: dict, note) -> None:
        """Execute stack.plan's actions with containers; each is done when the server reports it."""
        routing = routing_as_move_starts(new, self.state.secrets(), IN_NETWORK, reshard_action(old, new))
        model = self._write_files(project, new, refs, shards=routing)
        network = self._ensure_network(project)
        self._ensure_volumes(project, model)
        specs = self._specs(project, new, model, network)
        # A container made from an older spec (image, mounts, environment) is not "running"
        # for the plan: it is started again, recreated.
        outdated = {s for s, c in existing.items()
                    if s in specs and c["Labels"].get("scalelab.spec") != specs[s]["labels"]["scalelab.spec"]}
        running = {s for s, c in existing.items() if c["State"] in ("running", "paused")} - outdated
        run = _Run(self, project, new, existing, specs, network, outdated, fresh_stack=old is None)
        for action in plan(old, new, running):
            run.execute(action, note)

    def _roll_back(self, project: str, old: Topology | None, new: Topology, refs: dict,
                   ran_before: set, say) -> "RollbackReport":
        """After a failed change: put back what ran before, with the old files and settings."""
        report = RollbackReport()
        try:
            existing = self._list(project)
            running = {s for s, c in existing.items() if c["State"] in ("running", "paused")}
            if old is None:
                # Nothing ran before this call: remove what it created.
                containers = self._containers(project)
                for service in sorted(existing, key=stop_rank):
                    report.attempt(f"remove {service}", lambda s=service: containers.stop_remove(existing[s]))
                return report
            model = self._write_files(project, old, refs)
            network = self._ensure_network(project)
            specs = self._specs(project, old, model, network)
            run = _Run(self, project, old, existing, specs, network, set(), fresh_stack=False)
            for action in restore_plan(new, old, running, ran_before):
                report.attempt(str(action), lambda a=action: run.execute(a, say))
        except Exception as exc:   # noqa: BLE001 - reported with the original error, never swallowed
            report.failed.append(("reading the stack to roll back", exc))
        return report

    def _take_down(self, saved: dict, purge: bool, say) -> list[str]:
        """Stop and remove every container and the network (purge: the data volumes too)."""
        project = saved.get("project")
        if not project:
            return []
        done: list[str] = []
        existing = self._list(project)
        containers = self._containers(project)
        for batch in stop_stages(existing):
            run_parallel([lambda s=s: containers.stop_remove(existing[s]) for s in batch])
            for service in sorted(batch):
                done.append(f"stopped {service}")
                say(f"stopped {service}")
        for net in self.client.networks.list(filters={"label": f"scalelab.project={project}"}):
            net.remove()
            if existing:
                say(f"removed network {net.name}")
        if purge:
            for volume in self._volumes(project):
                volume.remove(force=True)
                done.append(f"deleted volume {volume.name}")
        return done


class _Run:
    """Executes plan actions on one compose project (one up() or one rollback)."""

    def __init__(self, stack: DockerStack, project: str, topology: Topology, existing: dict, specs: dict,
                 network: str, outdated: set, fresh_stack: bool):
        self.stack, self.client, self.project, self.topology = stack, stack.client, project, topology
        self.containers = stack._containers(project)
        self.existing, self.specs, self.network = existing, specs, network
        self.outdated, self.fresh_stack = outdated, fresh_stack
        self.access = clients.StackAccess(topology, stack.state.secrets())

    def execute(self, action: Action, note) -> None:
        kind = action.kind
        if kind == START:
            self._start(action.services, note)
            return
        if kind == STOP:
            listing = self.containers.listing()
            for stage in stop_stages(action.services):
                batch = [s for s in stage if s in listing]
                run_parallel([lambda s=s: self.containers.stop_remove(listing[s]) for s in batch])
                for service in batch:
                    note(f"stopped {service}" + (" (writes now go straight to the primary)"
                                                 if service == "pgbouncer" else ""))
            return
        if kind == RESTART_POSTGRES:
            for service in action.services:
                if action.replay and service == "postgres-replica":
                    clients.wait_replayed(self.access)
                self.containers.restart(service)
                self.containers.wait_ready(self.access, service)
            for service in action.services:
                clients.wait_postgres_settings(self.access, service, action.expect[service], timeout=30)
            clients.wait_streaming(self.access)
            apps = [s for s, c in self.containers.listing().items() if s.startswith("app-") and c["State"] == "running"]
            clients.wait_replicas_reconnected(self.access, [_index(s) for s in apps])
        elif kind == RELOAD_POSTGRES:
            for service in action.services:
                with clients.connect(self.access, service, dbname="postgres") as conn:
                    conn.execute("SELECT pg_reload_conf()")
            for service in action.services:
                clients.wait_postgres_settings(self.access, service, action.expect[service])
        elif kind == SET_REDIS:
            clients.set_redis_config(self.access, action.expect)
        elif kind == RELOAD_PGBOUNCER:
            self.containers.get("pgbouncer").kill(signal="SIGHUP")
            clients.wait_pgbouncer_config(self.access, action.expect)
        elif kind == PUSH_APP_CONFIG:
            run_parallel([lambda s=s: clients.push_app_config(self.access, _index(s), action.expect)
                          for s in action.services])
        elif kind == SET_CPU_QUOTA:
            cpus = action.expect["cpus"]
            quota = int(cpus * 100_000) if cpus is not None else -1
            listing = self.containers.listing()
            for service in action.services:
                self.client.api.update_container(listing[service]["Id"], cpu_period=100_000, cpu_quota=quota)
            for service in action.services:   # in force: the engine reports the new quota
                reported = self.client.api.inspect_container(listing[service]["Id"])["HostConfig"]["CpuQuota"]
                if reported not in (quota, 0 if quota == -1 else quota):
                    raise StackError(f"{service}: the engine reports cpu_quota={reported}, expected {quota}")
        elif kind == RELOAD_NGINX:
            self._reload_nginx(action.drain_s)
        elif kind == RESHARD:
            note(self._reshard(action))
            return
        else:
            raise StackError(f"action={kind!r} is not allowed here: the Docker backend executes {', '.join(KINDS)}")
        note(describe(action, self.topology))

    def _reshard(self, action: Action) -> str:
        """Move users between shard maps (EngineStack._reshard): each phase's routing goes into the
        runtime app config (for replicas created meanwhile) and is pushed to every running replica."""
        secrets = self.stack.state.secrets()

        def push(routing, expect) -> None:
            write_runtime(self.stack.state.run_dir, self.topology, secrets, shards=routing)
            apps = [s for s, c in self.containers.listing().items() if s.startswith("app-") and c["State"] == "running"]
            run_parallel([lambda s=s: clients.push_app_config(self.access, _index(s), expect) for s in apps])

        return self.stack._reshard(self.access, self.topology, action, push)

    def _start(self, services, note) -> None:
        """Create what is missing (recreate what is outdated), all at once, nginx last: it
        resolves app-1 ... app-N when it loads its upstream."""
        recreate = [s for s in services if s in self.outdated]
        if recreate:
            run_parallel([lambda s=s: self.containers.stop_remove(self.existing[s]) for s in recreate])

        def bring(service: str) -> None:
            c = self.existing.get(service)
            if c is not None and service not in self.outdated:
                self.client.api.start(c["Id"])          # it had stopped: the same container again
                note(f"started {service} (it had stopped)")
            else:
                self.containers.create(service, self.specs[service], self.network)
                note(("recreated " if service in self.outdated else "created ") + service)

        first = [s for s in services if s != "nginx"]
        run_parallel([lambda s=s: bring(s) for s in first])
        if self.fresh_stack:
            if "nginx" in services:
                bring("nginx")
            self.containers.wait_healthy(list(services))
            note(f"every service healthy ({len(self.specs)} containers)")
            return
        # A live stack: what was (re)started must answer before anything depends on it (new
        # replicas before nginx sends them traffic).
        run_parallel([lambda s=s: self.containers.wait_ready(self.access, s) for s in first])
        if "nginx" in services:
            bring("nginx")
            self.containers.wait_ready(self.access, "nginx")

    def _reload_nginx(self, drain: float = 0) -> None:
        result = self.containers.get("nginx").exec_run(["nginx-reload", str(int(drain))])
        if result.exit_code != 0:
            raise StackError(f"nginx reload failed (exit {result.exit_code}): "
                             f"{result.output.decode(errors='replace').strip()}")
