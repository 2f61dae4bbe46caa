"""The Swarm backend: the topology as a `docker stack`, changed live by executing stack.plan.

    stack = SwarmStack()
    stack.up()                            # swarm init if needed, build missing images, deploy, healthy
    stack.apply(replicas=6)               # `docker service scale`, then nginx reloaded with the tasks
    stack.apply(strategy="round_robin")   # the new upstream written into nginx's task, then a reload
    stack.apply(ttl_s=30)                 # the new app config pushed into every task, no restart
    stack.down()                          # the stack goes (data volumes stay); a swarm it made is left

How each plan action becomes a Swarm operation:

    start              `docker stack deploy` of a stack file holding just those services
                       (all of them on a fresh stack); more app replicas: a service scale
    stop               service scale (app replicas) or service remove
    reload_nginx       the upstream rendered for the running tasks written into the nginx task,
                       then `nginx-reload` (graceful: no request dropped). A config rotation would
                       restart nginx's one task (stop-first: its host-mode port), failing every
                       request for ~12 s; the deployed config is only nginx's seed
    reload_postgres    ALTER SYSTEM SET + pg_reload_conf(), until pg_settings shows it
    restart_postgres   ALTER SYSTEM SET, then a forced service update (a new task, same volume)
    set_redis          CONFIG SET;  reload_pgbouncer: SET on PgBouncer's admin console
    push_app_config    the new config file written into each task, then POST /_admin/config;
                       with app tasks on other nodes (out of this engine's reach): the app's
                       seed config secret rotated in by a service update (a rolling update)
    set_cpu_quota      a service update of resources.limits (Swarm replaces the tasks)
    reshard            stack.resharding moves the users (from the host, at the shard servers'
                       published ports); each phase's routing (the app config's "shards", in-network
                       DSNs: postgres-shard-N:5432) is pushed into every app task before the next
                       (EngineStack._reshard, shared with the docker backend). Shard servers start
                       and stop as services (`postgres-shard-N`, one task, own volume)

nginx, PostgreSQL (shard servers too), PgBouncer and Redis are published at their fixed ports (host
mode), each app task on a port its engine picks; context() and status() report each one (the course
asks one replica for its /metrics), and traffic goes through nginx. When up() makes the swarm, it
first makes the engine's docker_gwbridge bind published ports on 127.0.0.1 (stack.swarm.gateway),
so they listen on loopback only; an engine already in a swarm keeps its bridge, and status() says
where its ports listen (read from the containers).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from psycopg import sql

from .. import clients, resharding
from ..docker.compose import to_yaml
from ..docker.config import postgres_settings, project_files
from ..docker.engine_stack import EngineStack, refuse_other_base_port
from ..progress import Progress, quiet, recorder
from ..docker.images import ensure_images
from ..docker.runtime import write_runtime
from ..docker.compose import data_volumes
from ..docker.state import DockerState
from ..docker.volumes import refuse_foreign_volumes, volume_labels
from ..errors import PortInUseError, StackError
from ..files import run_parallel
from ..plan import (KINDS, PUSH_APP_CONFIG, RELOAD_NGINX, RELOAD_PGBOUNCER, RELOAD_POSTGRES, RESTART_POSTGRES,
                    RESHARD, SET_CPU_QUOTA, SET_REDIS, START, STOP, Action, describe, plan, reshard_action,
                    STOP_ORDER, services_for, stop_rank, stop_stages)
from ..ports import HOST, Ports, port_is_free
from ..rollback import RollbackReport
from ..topology import Topology
from . import gateway
from .services import Placement, SwarmServices, published_bindings
from .stackfile import (APP_CONFIG, NGINX_UPSTREAM, is_published, published_services, runtime_texts, secret_names,
                        swarm_model, task_addresses, upstream_conf)

APP_UID = 10001                   # the app image's `scalelab` user
HEADER = "# The stack this SwarmStack deployed (stack.swarm.stackfile), for `docker stack deploy -c`.\n"


def stack_name(topology: Topology) -> str:
    return f"scalelab-{topology.base_port}"


def default_state_dir() -> Path:
    env = os.environ.get("SCALELAB_SWARM_STATE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"scalelab-swarm-{os.getuid()}"


def _short(service: str) -> str:
    return "app" if service.startswith("app-") else service


class SwarmStack(EngineStack):
    backend = "swarm"

    def __init__(self, state_dir: str | Path | None = None, client=None):
        super().__init__(DockerState(state_dir or default_state_dir()), client)

    def _services(self, name: str) -> SwarmServices:
        return SwarmServices(self.client, name)

    def _service_containers(self, saved: dict) -> dict[str, dict]:
        return self._services(saved["stack"]).containers() if saved.get("stack") else {}

    def _app_placement(self, saved: dict) -> Placement | None:
        """Where the app tasks run (read from the manager's task list, which has every node's
        tasks; the other services are placed on a manager); None when no stack is up."""
        if not saved.get("stack") or not saved.get("up"):
            return None
        return self._services(saved["stack"]).placement("app")

    def _elsewhere(self, saved: dict, placement: Placement | None = None) -> dict[str, str]:
        """{app-N: node hostname} for the running app tasks on other nodes."""
        if placement is None:
            placement = self._app_placement(saved)
        if placement is None or not placement.elsewhere:
            return {}
        names = self._services(saved["stack"]).node_names()     # by ID where they cannot be listed
        return {f"app-{t['Slot']}": names.get(t["NodeID"], t["NodeID"]) for t in placement.elsewhere}

    def context(self, topology: Topology | None = None) -> clients.StackAccess:
        """Ports and secrets for talking to the running stack; each app task at the port the engine
        reports for it (asked on every call: a task Swarm replaced has another port)."""
        saved = self.state.load()
        topology = topology or Topology.from_state(saved) or Topology.from_env()
        placement = self._app_placement(saved)
        return clients.StackAccess(topology, self.state.secrets(), app_ports=placement.ports() if placement else {})

    # -- the swarm ----------------------------------------------------------------------------
    def _ensure_swarm(self, say) -> bool:
        """Join nothing, create at most: init a one-node swarm when this engine is in none.
        Returns whether this call created it (then down() leaves it again)."""
        state = self.client.info()["Swarm"].get("LocalNodeState")
        if state == "active":
            return False
        if state != "inactive":
            raise StackError(f"this engine's swarm state is {state!r}: expected 'active' or 'inactive' "
                             f"(`docker swarm leave --force` or `docker swarm init` first)")
        say(gateway.loopback_bridge(self.client))
        self.client.swarm.init(advertise_addr=HOST)
        say(f"initialised a one-node swarm (advertise address {HOST})")
        return True

    # -- reading what runs --------------------------------------------------------------------
    def _running_services(self, name: str, images: dict | None = None) -> set[str]:
        """The plan's view: infra services with a running task, app-1..app-k for k running app
        tasks. A service on another image than `images` counts as not running (redeployed)."""
        services = self._services(name)
        running = set()
        for short, info in services.services().items():
            image = info["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
            kind = "postgres" if short.startswith("postgres") or short == "pgbouncer" else short
            if images and images.get(kind) != image:
                continue
            count = len(services.running_tasks(short))
            if short == "app":
                running |= {f"app-{i}" for i in range(1, count + 1)}
            elif count:
                running.add(short)
        return running

    def status(self) -> dict:
        saved = self.state.load()
        topology = Topology.from_state(saved)
        ports = Ports(topology.base_port) if topology else None
        name = saved.get("stack")
        listing, error = {}, None
        if name:
            try:
                listing = self._services(name).containers()
            except StackError as exc:
                error = str(exc)
        wanted = services_for(topology) if topology and saved.get("up") else []
        placement = self._app_placement(saved) if name and not error else None
        app_ports = placement.ports() if placement else {}
        elsewhere = self._elsewhere(saved, placement) if placement else {}
        here = placement.node_name if elsewhere else None     # nodes named on a multi-node swarm
        services = {}
        for service in sorted(set(listing) | set(wanted) | set(elsewhere)):
            c = listing.get(service)
            health = None
            if c:
                health = next((h for h in ("unhealthy", "healthy", "starting") if h in c["Status"]), None)
            elif service in elsewhere:
                # Swarm reports a task running only once its health check passed.
                services[service] = {"state": "running", "health": "healthy", "pid": None, "container": None,
                                     "address": None, "node": elsewhere[service]}
                continue
            services[service] = {
                "state": c["State"] if c else ("unknown" if error else "missing"), "health": health,
                "pid": None, "container": c["Id"][:12] if c else None,
                "address": _address(service, ports, app_ports), "node": here if c else None}
        nginx = services.get("nginx")
        if nginx and nginx["state"] == "running" and saved.get("nginx_view") and not error:
            running = {f"nginx={t['ID']}" for t in self._services(name).running_tasks("nginx")}
            if not running & set(saved["nginx_view"]):
                nginx["note"] = ("a new task (Swarm restarted it): it runs its seed upstream, the strategy of "
                                 "nginx's last deploy over tasks.app with equal weights, until `up` writes the live one")
        result = {"backend": self.backend, "state_dir": str(self.state.path), "stack": name,
                  "url": f"http://{HOST}:{ports.nginx}" if ports else None,
                  "running": any(s["state"] == "running" for s in services.values()),
                  "topology": topology.to_dict() if topology else None, "services": services,
                  "resharding": resharding.last_report(self.state.path)}
        # The address status() gives is where to connect; a user should know what else listens.
        note = gateway.listening_note(published_bindings(listing))
        if note:
            result["listening"] = note
        if error:
            result["error"] = error
        return result

    # -- changing it ------------------------------------------------------------------------------
    def _up(self, topology: Topology | None, progress: Progress | None, check_images: bool) -> list[str]:
        say = progress or quiet
        if topology is not None and not isinstance(topology, Topology):
            raise StackError(f"topology must be a stack.Topology, got {type(topology).__name__}")
        self.client
        with self.state.locked():
            saved = self.state.load()
            old = Topology.from_state(saved)
            new = topology or old or Topology.from_env()
            name = saved.get("stack") or stack_name(new)
            volumes = [f"{name}_{v}" for v in data_volumes(new)]
            refuse_foreign_volumes(self.client, volumes, self.state, owner=("com.docker.stack.namespace", name))
            created = self._ensure_swarm(say) or saved.get("swarm_created", False)
            refs = saved.get("images") if not check_images and saved.get("images") else ensure_images(self.client, say)
            running = self._running_services(name, refs)
            refuse_other_base_port(old, new, running)
            for service in published_services(new):
                port = Ports(new.base_port).of(service)
                # A port our own container holds is not another program's: Swarm may be restarting
                # that service's task (a killed server's new task binds before it counts as running).
                if (service not in running and not port_is_free(port)
                        and port not in self._services(name).held_ports()):
                    raise PortInUseError(f"port {port} ({service}) is already in use by another program: stop it, "
                                         f"or choose other ports with Topology(base_port=...). Nothing was changed.")
            done, note = recorder(say)

            live = old if (old is not None and running) else None
            run = _Run(self, name, live, new, refs, nginx_view=saved.get("nginx_view"))
            actions = plan(live, new, running)
            if live is not None and reshard_action(live, new) and run._app_tasks_elsewhere():
                raise StackError(
                    f"postgres.shards={new.postgres.shards}, shard_scheme={new.postgres.shard_scheme!r} is not "
                    f"allowed while app tasks run on other nodes: resharding pushes each phase's routing into "
                    f"every app task, and this engine reaches only its own node's. Allowed: a shard change on a "
                    f"one-node swarm (or with every app task on this node). Nothing was changed.")
            if not saved.get("stack"):      # a first up that fails: down(purge=True) still finds what it made
                self.state.save({**saved, "backend": "swarm", "stack": name, "swarm_created": created})
            self._ensure_volumes(name, volumes)
            try:
                for action in actions:
                    run.execute(action, note)
                run.converge(note)
            except BaseException as exc:
                report = RollbackReport()
                if old is not None and live is not None:
                    back = _Run(self, name, new, old, refs)
                    for action in plan(new, old, self._running_services(name, refs)):
                        report.attempt(str(action), lambda a=action: back.execute(a, say))
                report.attach(exc)
                raise
            self.state.save({"backend": "swarm", "stack": name, "topology": new.to_dict(), "images": refs,
                             "up": True, "swarm_created": created, "nginx_view": run.nginx_view})
            return done

    def _ensure_volumes(self, name: str, volumes: list[str]) -> None:
        """Made before `docker stack deploy` (which would make them unmarked, and use them as they are),
        with the stack's label and the mark of this state's passwords."""
        have = {v.name for v in self.client.volumes.list(filters={"label": f"com.docker.stack.namespace={name}"})}
        for volume in volumes:
            if volume not in have:
                self.client.volumes.create(volume, labels=volume_labels(
                    self.state.secrets(), **{"com.docker.stack.namespace": name}))

    DOWN_STATE = {"up": False, "swarm_created": False}

    def _take_down(self, saved: dict, purge: bool, say) -> list[str]:
        """Remove the stack's services, network, configs and secrets (purge: the data volumes too).
        A swarm that up() initialised is left again."""
        done: list[str] = []
        name = saved.get("stack")
        if name and self.client.info()["Swarm"].get("LocalNodeState") == "active":
            done += self._remove_stack(name, say)
            topology = Topology.from_state(saved)
            if topology:
                done += _wait_ports_released(Ports(topology.base_port).all_for(topology))
        if purge and name:
            self._services(name).wait_stack_gone()
            for volume in self.client.volumes.list(filters={"label": f"com.docker.stack.namespace={name}"}):
                volume.remove(force=True)
                done.append(f"deleted volume {volume.name}")
        if saved.get("swarm_created") and self.client.info()["Swarm"].get("LocalNodeState") == "active":
            self.client.swarm.leave(force=True)
            done.append("left the swarm this stack had initialised")
            say(done[-1])
        return done

    def _remove_stack(self, name: str, say) -> list[str]:
        services = self._services(name)
        present = services.services()
        if not present:
            return []
        # Settings changed live (ALTER SYSTEM) live in the data volume: the next up() starts from the file.
        for server in ("postgres-primary", "postgres-replica"):
            if server in present and services.running_tasks(server):
                try:
                    with clients.connect(self.context(), server, dbname="postgres") as conn:
                        conn.execute("ALTER SYSTEM RESET ALL")
                except Exception as exc:   # noqa: BLE001 - said, and the removal goes on
                    say(f"could not reset {server}'s live settings ({exc}): the next up() keeps them")
        # Every service at once (see remove_all: one after another took ~30 s). The whole stack
        # goes, so no order protects a client; the order only makes the report read front to back.
        order = sorted(present, key=lambda s: (_removal_rank(s), s))
        services.remove_all(order)
        done = [f"stopped {short}" for short in order]
        for line in done:
            say(line)
        services.prune_unused()
        for net in self.client.networks.list(filters={"label": f"com.docker.stack.namespace={name}"}):
            try:
                net.remove()
            except Exception:   # noqa: BLE001 - Swarm removes an overlay network itself once unused
                pass
        return done


def _address(service: str, ports: Ports | None, app_ports: dict[int, int]) -> str | None:
    if ports and is_published(service):
        return f"{HOST}:{ports.of(service)}"
    if service.startswith("app-") and int(service.split("-")[1]) in app_ports:
        return f"{HOST}:{app_ports[int(service.split('-')[1])]}"
    return None


def _removal_rank(short: str) -> int:
    """STOP_ORDER's stage of a service of the stack; one it does not know (an older release's) goes last."""
    try:
        return stop_rank(short)
    except StackError:
        return len(STOP_ORDER)


def _wait_ports_released(ports: dict, timeout_s: float = 15.0) -> list[str]:
    """A removed task's published port is released a moment after the task is gone: down() returns
    only once every port is free on every interface (where a swarm made elsewhere publishes), so the next
    up() can bind."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = {name: port for name, port in ports.items() if not port_is_free(port, "0.0.0.0")}
        if not held or time.monotonic() > deadline:
            return [f"port {port} ({name}) still bound {timeout_s:g} s after its service was removed"
                    for name, port in held.items()]
        time.sleep(0.1)


class _Run:
    """Executes plan actions on one Swarm stack (one up() or one rollback)."""

    def __init__(self, stack: SwarmStack, name: str, old: Topology | None, topology: Topology, images: dict,
                 nginx_view: list | None = None):
        self.stack, self.name, self.old, self.topology, self.images = stack, name, old, topology, images
        self.nginx_view = nginx_view    # the containers (nginx, app tasks) when nginx last reloaded
        self.pushed: dict[str, str] = {}   # container id -> the app config this run pushed into it
        self.services = stack._services(name)
        self.access = clients.StackAccess(topology, stack.state.secrets())

    # -- files ------------------------------------------------------------------------------------
    def _stack_file(self, only: tuple[str, ...] | None) -> Path:
        """Render the files a deploy reads into the state directory; returns the stack file."""
        state = self.stack.state
        state.ensure()
        secrets = state.secrets()
        files = project_files(self.topology)
        files["docker/conf/swarm/upstream.conf"] = upstream_conf(self.topology)
        state.write_files(state.project_dir, files)
        write_runtime(state.run_dir, self.topology, secrets)
        model = swarm_model(self.topology, images=self.images, secrets=secrets, only=only)
        path = state.project_dir / ("swarm-stack.yml" if only is None else "swarm-partial.yml")
        state.write_files(state.project_dir, {path.name: to_yaml(model, HEADER)}, 0o600)
        return path

    def execute(self, action: Action, note) -> None:
        kind = action.kind
        if kind == START:
            self._start(action.services, note)
            return
        if kind == STOP:
            self._stop(action.services, note)
            return
        if kind == RELOAD_NGINX:
            if action.drain_s:
                # Replicas leave: Swarm picks which, so scale first, reload nginx without them, then
                # signal them at once (they finish their requests within stop_grace_period).
                self.services.scale("app", self.topology.app.replicas)
                self.reload_nginx(0)
                named = {entry.split("=", 1)[1] for entry in self.nginx_view or () if entry.startswith("app=")}
                self.services.stop_leaving("app", self.topology.app.replicas, spare=named)
                self.services.wait_converged("app")
            self.reload_nginx(0)
        elif kind == RELOAD_POSTGRES:
            for server in action.services:
                self._alter_system(server)
                with clients.connect(self.access, server, dbname="postgres") as conn:
                    conn.execute("SELECT pg_reload_conf()")
            for server in action.services:
                clients.wait_postgres_settings(self.access, server, action.expect[server])
        elif kind == RESTART_POSTGRES:
            for server in action.services:
                if action.replay and server == "postgres-replica":
                    clients.wait_replayed(self.access)
                self._alter_system(server)
                self.services.force_update(server)
                self.services.wait_converged(server)
                _wait_answers(self.access, server)
            for server in action.services:
                clients.wait_postgres_settings(self.access, server, action.expect[server], timeout=30)
            clients.wait_streaming(self.access)
        elif kind == SET_REDIS:
            clients.set_redis_config(self.access, action.expect)
        elif kind == RELOAD_PGBOUNCER:
            for key, value in action.expect.items():
                clients.pgbouncer_set(self.access, key, value)
            clients.wait_pgbouncer_config(self.access, action.expect)
        elif kind == PUSH_APP_CONFIG:
            if self._app_tasks_elsewhere():
                # A task on another node is out of this engine's reach (exec and file copies are
                # per engine): the new config goes in as the app's seed secret, a rolling update.
                self._redeploy(("app",))
                self.reload_nginx(0)
                note(ROTATED_APP_CONFIG)
                return
            self.push_app_config(action.expect, every=True)
        elif kind == RESHARD:
            note(self.stack._reshard(self.access, self.topology, action, self._push_routing))
            return
        elif kind == SET_CPU_QUOTA:
            self._redeploy(("app",))
            self.reload_nginx(0)     # new tasks, new addresses
            wanted = int((action.expect["cpus"] or 0) * 1e9)
            spec = self.services.services()["app"]["Spec"]["TaskTemplate"].get("Resources", {})
            reported = (spec.get("Limits") or {}).get("NanoCPUs", 0)
            if reported != wanted:
                raise StackError(f"app: the engine reports NanoCPUs={reported}, expected {wanted}")
        else:
            raise StackError(f"action={kind!r} is not allowed here: the Swarm backend executes {', '.join(KINDS)}")
        note(describe(action, self.topology))

    # -- start / stop ---------------------------------------------------------------------------------
    def _start(self, services, note) -> None:
        present = self.services.services()
        shorts = tuple(dict.fromkeys(_short(s) for s in services))
        fresh = not present
        deploy = tuple(s for s in shorts if s not in present or s != "app" or not self._same_image("app", present))
        scale_only = "app" in shorts and "app" not in deploy
        if deploy:
            self.services.deploy(self._stack_file(None if fresh else deploy))
        if scale_only:
            self.services.scale("app", self.topology.app.replicas)
        self.services.wait_converged(*shorts)
        if "app" in shorts:
            self.push_app_config(None, every=False)
        self.services.prune_unused()
        if fresh:
            note(f"deployed stack {self.name}: every service healthy ({len(shorts)} services)")
        else:
            for short in shorts:
                note(f"started {short}" if short != "app" else
                     f"scaled app to {self.topology.app.replicas} replicas")

    def _same_image(self, short: str, present: dict) -> bool:
        return present[short]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0] == self.images[short]

    def _stop(self, services, note) -> None:
        if any(s.startswith("app-") for s in services):
            wanted = self.topology.app.replicas
            if self.services.services()["app"]["Spec"]["Mode"]["Replicated"]["Replicas"] != wanted:
                self.services.scale("app", wanted)      # (reload_nginx has done it when nginx runs)
                self.services.stop_leaving("app", wanted)
                self.services.wait_converged("app")
            note(f"scaled app to {wanted} replicas")
        for stage in stop_stages(s for s in services if not s.startswith("app-")):
            self.services.remove_all(stage, until="stopped")     # e.g. four shard servers at once
            # Free for the next start (a shard server coming back); a port still held is said.
            for held in _wait_ports_released({s: Ports(self.topology.base_port).of(s) for s in stage if is_published(s)}):
                note(held)
            for short in stage:
                note(f"stopped {short}" + (" (writes now go straight to the primary)" if short == "pgbouncer" else ""))

    def _redeploy(self, shorts: tuple[str, ...]) -> None:
        """A service update from the stack file (rotated configs, new limits), until every task is new."""
        self.services.deploy(self._stack_file(shorts))
        for short in shorts:
            if short == "app" and "nginx" in self.services.services():
                self._follow_app_update()
            else:
                self.services.wait_converged(short)
            if short == "app":
                self.push_app_config(None, every=False)
        self.services.prune_unused()

    def _follow_app_update(self, timeout: float = 120) -> None:
        """Until the app's rolling update is done, reload nginx each time its tasks change: nginx
        learns of tasks only on a reload, and without one it would know none of the new tasks
        once the last old one stopped (every GET a 502 until the end of the update)."""
        deadline = time.monotonic() + timeout
        failed_before = self.services.failed_before("app")
        while not self.services._converged("app", deadline, timeout, failed_before):
            if self._view() != self.nginx_view:
                # No settling: mid update more tasks than replicas are wanted, and every one serves.
                self.reload_nginx(0, settle_s=0)
            time.sleep(0.2)

    # -- live settings -----------------------------------------------------------------------------------
    def _alter_system(self, server: str) -> None:
        """ALTER SYSTEM SET what the new topology renders differently from the old (the deployed
        config file cannot change: Swarm configs are immutable)."""
        role = server.split("-")[1]
        new = postgres_settings(self.topology, role)
        old = postgres_settings(self.old, role) if self.old else {}
        with clients.connect(self.access, server, dbname="postgres") as conn:
            for key, value in new.items():
                if old.get(key) != value:
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(key),
                                                                           sql.Literal(str(value))))

    def _view(self, app_tasks: list[dict] | None = None) -> list[str]:
        """The running nginx and app tasks, from the manager's task list: it sees every node's
        tasks (a container listing shows only this engine's), so a task Swarm moved to another
        node (a drained node, a failed one) changes the view and the next up() reloads nginx."""
        app_tasks = self.services.running_tasks("app") if app_tasks is None else app_tasks
        return sorted([f"nginx={t['ID']}" for t in self.services.running_tasks("nginx")] +
                      [f"app={t['ID']}" for t in app_tasks])

    def _settled_app_tasks(self, timeout: float = 3.0) -> list[dict]:
        """The running app tasks, once Swarm has marked the ones a scale-down removes (it does so a
        moment after the scale call; until then they still look wanted). At most `timeout`: mid
        rolling update more tasks than replicas are wanted for a while, and each one serves."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = [t for t in self.services.tasks("app") if t["DesiredState"] == "running"]
            if len(tasks) <= self.topology.app.replicas or time.monotonic() > deadline:
                return [t for t in tasks if t["Status"]["State"] == "running"]
            time.sleep(0.1)

    def reload_nginx(self, drain: float, settle_s: float = 3.0) -> None:
        """Write the upstream for the running app tasks (each by its address, with its slot's weight)
        into the nginx task and reload it gracefully: how nginx learns of new tasks and forgets gone
        ones. A reload nginx refuses puts the previous file back (nginx goes on with it) and raises."""
        nginx = self.services.containers().get("nginx")
        if nginx is None:
            raise StackError("nginx has no running task to reload")
        app_tasks = self._settled_app_tasks(settle_s)
        tasks = task_addresses(app_tasks, f"{self.name}_default")
        if app_tasks and not tasks:
            raise StackError(f"the running app tasks have no address on network {self.name}_default: "
                             f"nginx cannot be given them")
        previous = self.services.exec(nginx["Id"], ["cat", NGINX_UPSTREAM])
        self.services.put_file(nginx["Id"], NGINX_UPSTREAM, upstream_conf(self.topology, tasks), 0, 0o644)
        try:
            self.services.exec(nginx["Id"], ["nginx-reload", str(int(drain))])
        except StackError:
            self.services.put_file(nginx["Id"], NGINX_UPSTREAM, previous, 0, 0o644)
            self.nginx_view = None      # the next up() reloads again
            raise
        self.nginx_view = self._view(app_tasks)

    def _push_routing(self, routing: dict | None, expect: dict) -> None:
        """One phase of a reshard: every app task routes by `routing` (EngineStack._reshard). The
        deployed seed keeps the topology's routing, the one in force once the move is done."""
        self.push_app_config(expect, every=True, shards=routing)

    def push_app_config(self, expect: dict | None, every: bool, shards="topology") -> None:
        """Write the app config into each task and make it re-read it (POST /_admin/config).
        every=False: only tasks whose file differs (new tasks start from the deployed seed).
        `shards`: the routing to write when not the topology's (a phase of a reshard)."""
        text = runtime_texts(self.topology, self.stack.state.secrets(), shards)["app_config"]
        wanted = json.loads(text)
        apps = {n: c for n, c in self.services.containers().items() if n.startswith("app-")}

        def push(name: str, container: dict) -> None:
            cid = container["Id"]
            # A task this run already pushed to holds the file: not asked again (each ask is a
            # docker exec, ~0.1-0.4 s when the machine is busy: it showed in the dashboards' reaction).
            if not every and (self.pushed.get(cid) == text
                              or self.services.read_json_file(cid, APP_CONFIG) == wanted):
                return
            self.services.put_file(cid, APP_CONFIG, text, APP_UID)
            reported = json.loads(self.services.exec(cid, ["python3", "-c", _POST_CONFIG, APP_CONFIG]))
            if expect and {k: reported.get(k) for k in expect} != expect:
                raise StackError(f"{name} did not take the new config: expected {expect}, it reports "
                                 f"{ {k: reported.get(k) for k in expect} }")
            self.pushed[cid] = text
        run_parallel([lambda n=n, c=c: push(n, c) for n, c in apps.items()])

    def _app_tasks_elsewhere(self) -> bool:
        """Whether an app task runs on another node than this engine's (a multi-node swarm)."""
        return bool(self.services.placement("app").elsewhere)

    def _seed_is_current(self, present: dict) -> bool:
        """Whether the app service's seed config secret holds this topology's app config."""
        wanted = secret_names(self.topology, self.stack.state.secrets())["app_config"]
        refs = present["app"]["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
        return any(r["SecretName"] == self.services.full_name(wanted) for r in refs)   # stack-prefixed

    def converge(self, note) -> None:
        """After the plan: a task Swarm started by itself (a crash healed, a fresh deploy whose nginx
        started before the app's tasks were healthy) starts from the deployed seed config and is
        unknown to nginx. Push the config, and reload nginx when its view is not what runs.
        A task on another node cannot be pushed to: there, a stale seed is rotated (a rolling update)."""
        present = self.services.services()
        if "app" in present:
            if self._app_tasks_elsewhere() and not self._seed_is_current(present):
                self._redeploy(("app",))
                note(ROTATED_APP_CONFIG)
            self.push_app_config(None, every=False)
        if "nginx" in present and self._view() != self.nginx_view:
            self.reload_nginx(0)
            note(RELOADED_FOR_TASKS)


RELOADED_FOR_TASKS = "reloaded nginx: its upstream now names every running app task"
ROTATED_APP_CONFIG = ("rotated app config (ttl, pools, concurrency, read target) into the app service: "
                      "tasks on other nodes, a rolling update")

# Inside an app task: ask the replica to re-read its config file (the token is in that file).
_POST_CONFIG = ("import json, sys, urllib.request as u; c = json.load(open(sys.argv[1])); "
                "r = u.Request('http://127.0.0.1:8000/_admin/config', data=b'', method='POST', "
                "headers={'X-Admin-Token': c['admin_token']}); print(u.urlopen(r, timeout=5).read().decode())")


def _wait_answers(target, service: str, timeout: float = 60) -> None:
    probe = clients.probe(target, service)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except Exception:   # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{service} did not answer on its published port within {timeout:.0f} s")
        time.sleep(0.05)
