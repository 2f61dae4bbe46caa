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
import time
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import ServiceFailedError, StackError, UnknownServiceError
from ..files import run_parallel
from ..ports import HOST, Ports, refuse_ports_in_use
from ..topology import Topology
from .compose import compose_model, container_spec, host_port, services_for, to_yaml
from .config import project_files
from .engine import connect
from .images import ensure_images
from .runtime import write_runtime
from .state import DockerState

Progress = Callable[[str], None]
STOP_ORDER = (("nginx",), ("app",), ("pgbouncer", "redis"), ("postgres-replica",), ("postgres-primary",))
LIVE_SPEC_KEYS = ("cpu_period", "cpu_quota", "labels")   # changed with `docker update`, not a recreate
BACKEND_HEADER = """\
# The compose model this DockerStack runs (rendered by stack.docker.compose; informational:
# the containers are created from it with the docker SDK). Inspect with
#   docker compose -p {project} -f {path} ps|logs
"""


def _quiet(_message: str) -> None:
    pass


def project_name(topology: Topology) -> str:
    return f"scalelab-{topology.base_port}"


def _app_config(t: Topology) -> tuple:
    return (t.app.write_pool, t.app.read_pool, t.app.pool_timeout_s, t.app.pool_idle_s, t.app.read_from,
            t.app.concurrency, t.cache.ttl_s, t.pgbouncer.enabled, t.postgres.replica_delay_ms)


def _spec_hash(spec: dict) -> str:
    kept = {k: v for k, v in spec.items() if k not in LIVE_SPEC_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


class DockerStack:
    backend = "docker"

    def __init__(self, state_dir: str | Path | None = None, client=None):
        self.state = DockerState(state_dir)
        self._client = client

    # -- the engine ----------------------------------------------------------------------
    @property
    def client(self):
        """The docker SDK client; EngineUnavailableError (says what to do) when no engine answers."""
        if self._client is None:
            self._client = connect()
        return self._client

    def _list(self, project: str) -> dict[str, dict]:
        """The project's containers by service (one API call): Id, State, Status, Labels ..."""
        found = self.client.api.containers(all=True, filters={"label": f"scalelab.project={project}"})
        return {c["Labels"]["scalelab.service"]: c for c in found}

    def _get(self, container_id: str):
        return self.client.containers.get(container_id)

    # -- reading what runs ------------------------------------------------------------------
    def applied(self) -> Topology | None:
        """The topology the stack was last brought to, if any."""
        return Topology.from_state(self.state.load())

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
                except Exception:   # noqa: BLE001 - it may have stopped meanwhile
                    pid = None
            services[service] = {"state": state, "health": health, "pid": pid,
                                 "container": c["Id"][:12] if c else None,
                                 "address": f"{HOST}:{host_port(service, ports)}" if ports else None}
        result = {"backend": self.backend, "state_dir": str(self.state.path),
                  "url": f"http://{HOST}:{ports.nginx}" if ports else None,
                  "running": any(s["state"] == "running" for s in services.values()),
                  "topology": topology.to_dict() if topology else None, "services": services,
                  "project": project}
        if error:
            result["error"] = error
        return result

    def logs(self, service: str, lines: int = 50) -> str:
        saved = self.state.load()
        listing = self._list(saved["project"]) if saved.get("project") else {}
        if service not in listing:
            raise StackError(f"no log for service {service!r}: known services are "
                             f"{', '.join(sorted(listing)) or 'none yet'}")
        raw = self.client.api.logs(listing[service]["Id"], tail=lines, timestamps=False)
        return raw.decode(errors="replace").rstrip("\n")

    def context(self, topology: Topology | None = None):
        """A Context for talking to the running stack (clients, DSNs), as LocalStack.context()."""
        from ..local.context import Context
        topology = topology or self.applied() or Topology()
        return Context(self.state, None, topology, self.state.secrets())

    def build(self, progress: Progress | None = None, force: bool = False) -> dict[str, str]:
        """Build the images that are missing for the current sources (all with force=True)."""
        return ensure_images(self.client, progress or _quiet, force=force)

    # -- changing it ------------------------------------------------------------------------
    def apply(self, progress: Progress | None = None, **changes) -> list[str]:
        """Change some fields of the running topology (see Topology.with_changes)."""
        current = self.applied() or Topology()
        # A topology change keeps the images the stack runs; up() is what picks up new sources.
        return self._up(current.with_changes(**changes), progress, check_images=False)

    def up(self, topology: Topology | None = None, progress: Progress | None = None) -> list[str]:
        """Bring the stack to `topology` (default: what last ran, else the defaults).

        Returns what was done, one line per action; an empty list means it already matched.
        Images are rebuilt first if their sources changed (containers on an old image are
        then recreated). Every check that can refuse runs before the first change; if a
        change fails, the containers this call created are removed and the old files restored.
        """
        return self._up(topology, progress, check_images=True)

    def _images(self, saved: dict, check: bool, say) -> dict[str, str]:
        refs = saved.get("images")
        if not check and refs:
            from docker.errors import ImageNotFound
            try:
                for ref in refs.values():
                    self.client.images.get(ref)
                return refs
            except ImageNotFound:
                pass
        return ensure_images(self.client, say)

    def _up(self, topology: Topology | None, progress: Progress | None, check_images: bool) -> list[str]:
        say = progress or _quiet
        if topology is not None and not isinstance(topology, Topology):
            raise StackError(f"topology must be a stack.Topology, got {type(topology).__name__}")
        self.client   # connect first: a clear error (what to do) when no engine answers
        with self.state.locked():
            saved = self.state.load()
            old = Topology.from_state(saved)
            new = topology or old or Topology()
            project = saved.get("project") or project_name(new)
            existing = self._list(project)
            running = {s for s, c in existing.items() if c["State"] == "running"}
            if running and old and old.base_port != new.base_port:
                raise StackError(f"base_port={new.base_port} differs from the running stack's "
                                 f"{old.base_port}: run down() first, then up() on the new port")
            refuse_ports_in_use(new, running)
            if not self.state.has_secrets() and self._volumes(project):
                raise StackError(
                    f"Docker volumes of project {project!r} exist, but this state directory "
                    f"({self.state.path}) has no secrets for them (was it deleted?). Remove the old "
                    f"project's data: DockerStack(...).down(purge=True), or "
                    f"`docker volume rm {project}_primary-data {project}_replica-data`.")
            refs = self._images(saved, check_images, say)
            started = time.monotonic()
            done: list[str] = []

            def note(message: str) -> None:
                done.append(message)
                say(f"[{time.monotonic() - started:5.2f}s] {message}")

            live = old if (old is not None and running) else None
            created: list[str] = []
            try:
                self._reconcile(project, live, new, refs, existing, note, created)
            except BaseException:
                self._roll_back(project, old, created)
                raise
            self.state.save({"backend": "docker", "project": project, "topology": new.to_dict(),
                             "images": refs, "up": True})
            return done

    def _volumes(self, project: str) -> list:
        return self.client.volumes.list(filters={"label": f"scalelab.project={project}"})

    def _write_files(self, project: str, topology: Topology, refs: dict) -> tuple[list[str], list[str], dict]:
        """Render every file for `topology`; returns (changed conf paths, changed runtime paths, model)."""
        self.state.ensure()
        conf_changed = self.state.write_files(self.state.project_dir, project_files(topology))
        run_changed = write_runtime(self.state.run_dir, topology, self.state.secrets())
        model = compose_model(topology, standalone=False, images=refs, project=project)
        path = self.state.project_dir / "compose.yml"
        header = BACKEND_HEADER.format(project=project, path=path)
        self.state.write_files(self.state.project_dir, {"compose.yml": to_yaml(model, header)}, 0o600)
        return conf_changed, run_changed, model

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
                self.client.volumes.create(name, labels={"com.docker.compose.project": project,
                                                         "com.docker.compose.volume": volume,
                                                         "scalelab.project": project})

    def _create(self, service: str, spec: dict, network: str) -> None:
        from docker.types import EndpointConfig, Mount
        kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
        kwargs["mounts"] = [Mount(m["Target"], m["Source"], type=m["Type"], read_only=m["ReadOnly"])
                            for m in spec["_mounts"]]
        kwargs["labels"] = {**kwargs["labels"], "scalelab.stop-timeout": str(spec["_stop_timeout"])}
        kwargs["networking_config"] = {network: EndpointConfig(self.client.api._version, aliases=[service])}
        container = self.client.containers.create(**kwargs)
        container.start()

    def _reconcile(self, project: str, old: Topology | None, new: Topology, refs: dict,
                   existing: dict, note, created: list) -> None:
        conf_changed, run_changed, model = self._write_files(project, new, refs)
        network = self._ensure_network(project)
        self._ensure_volumes(project, model)
        wanted = services_for(new)
        specs = {}
        for service in wanted:
            spec = container_spec(service, model["services"][service], project, self.state.project_dir, network)
            spec["labels"]["scalelab.spec"] = _spec_hash(spec)
            specs[service] = spec
        to_create = [s for s in wanted if s not in existing]
        to_recreate = [s for s in wanted if s in existing
                       and existing[s]["Labels"].get("scalelab.spec") != specs[s]["labels"]["scalelab.spec"]]
        to_start = [s for s in wanted if s in existing and s not in to_recreate
                    and existing[s]["State"] not in ("running", "paused")]   # paused: resume() undoes it
        to_remove = sorted((s for s in existing if s not in wanted), key=_stop_rank)
        fresh = set(to_create) | set(to_recreate) | set(to_start)

        # 1. Containers that are missing, outdated or stopped: all at once, nginx last (it
        #    resolves app-1 ... app-N when it loads its upstream).
        if to_recreate:
            run_parallel([lambda s=s: self._stop_remove(existing[s]) for s in to_recreate])

        def bring(service: str) -> None:
            if service in to_start:
                self._get(existing[service]["Id"]).start()
                note(f"started {service} (it had stopped)")
            else:
                self._create(service, specs[service], network)
                created.append(service)
                note(("recreated " if service in to_recreate else "created ") + service)

        first = [s for s in wanted if s in fresh and s != "nginx"]
        run_parallel([lambda s=s: bring(s) for s in first])
        new_apps = [s for s in first if s.startswith("app-")]
        if old is None:
            if "nginx" in fresh:
                bring("nginx")
            run_parallel([lambda s=s: self._stop_remove(existing[s]) for s in to_remove])
            if fresh:
                self._wait_healthy(project, [s for s in wanted if s in fresh])
                note(f"every service healthy ({len(wanted)} containers)")
            return
        # A live stack: what was (re)started must answer before anything depends on it (new
        # replicas before nginx sends them traffic). Probed from the host, every 20 ms: quicker
        # than waiting for Docker's next health check.
        run_parallel([lambda s=s: self._wait_ready(new, s, project) for s in first])
        if "nginx" in fresh:
            bring("nginx")
            self._wait_ready(new, "nginx", project)

        # 2. Live changes to what already ran.
        kept = [s for s in wanted if s not in fresh]
        ctx = self.context(new)
        self._apply_settings(project, old, new, ctx, conf_changed, kept, note)
        kept_apps = [s for s in kept if s.startswith("app-")]
        if _app_config(old) != _app_config(new) or "app/config.json" in run_changed:
            from ..local.app import push_config
            run_parallel([lambda s=s: push_config(ctx, int(s.split("-")[1])) for s in kept_apps])
            note("pushed app config (ttl, pools, concurrency, read target) to running replicas")
        if old.app.cpu_quota != new.app.cpu_quota and kept_apps:
            quota = int(new.app.cpu_quota * 100_000) if new.app.cpu_quota is not None else -1
            listing = self._list(project)
            for service in kept_apps:
                self.client.api.update_container(listing[service]["Id"], cpu_period=100_000, cpu_quota=quota)
            note(f"set each replica's CPU quota to {new.app.cpu_quota or 'unlimited'}")

        # 3. The balancer, then whatever left it.
        removed_apps = [s for s in to_remove if s.startswith("app-")]
        upstream_changed = "docker/conf/nginx/upstream.conf" in conf_changed
        if "nginx" not in fresh and (upstream_changed or new_apps or removed_apps
                                     or any(s.startswith("app-") for s in to_recreate + to_start)):
            self._reload_nginx(project, drain=10 if removed_apps else 0)
            note(f"reloaded nginx: {new.balancer.strategy} over {new.app.replicas} replicas")
        for stage in STOP_ORDER:
            batch = [s for s in to_remove if _stop_rank(s) == STOP_ORDER.index(stage)]
            run_parallel([lambda s=s: self._stop_remove(existing[s]) for s in batch])
            for service in batch:
                note(f"stopped {service}" + (" (writes now go straight to the primary)"
                                             if service == "pgbouncer" else ""))

    def _apply_settings(self, project: str, old: Topology, new: Topology, ctx, conf_changed: list,
                        kept: list, note) -> None:
        if old.postgres != new.postgres and "postgres-primary" in kept:
            if old.postgres.max_connections != new.postgres.max_connections:
                self._restart_postgres(project, ctx, grow=new.postgres.max_connections > old.postgres.max_connections)
                note("restarted postgres (max_connections needs a restart)")
            else:
                for role, port in (("primary", ctx.ports.primary), ("replica", ctx.ports.replica)):
                    self._reload_postgres(ctx, port, new, role)
                note("reloaded postgres settings (synchronous_commit, replica apply delay)")
        if (old.cache.maxmemory_mb, old.cache.policy) != (new.cache.maxmemory_mb, new.cache.policy) \
                and "redis" in kept:
            from ..local.redis import client as redis_client
            conn = redis_client(ctx)
            conn.config_set("maxmemory", f"{new.cache.maxmemory_mb}mb")
            conn.config_set("maxmemory-policy", new.cache.policy)
            conn.close()
            note("changed redis maxmemory/policy live")
        if "docker/conf/pgbouncer/pgbouncer.ini" in conf_changed and "pgbouncer" in kept:
            self._get(self._list(project)["pgbouncer"]["Id"]).kill(signal="SIGHUP")
            note("reloaded pgbouncer")

    def _restart_postgres(self, project: str, ctx, grow: bool) -> None:
        """Restart both servers for a new max_connections, in the order a standby accepts.

        A standby refuses to start with a lower max_connections than the one the primary
        last logged in its WAL. Growing: the standby first, then the primary. Shrinking:
        the primary first; the standby (still on the old, higher value) replays the new
        value from the WAL, then restarts with it.
        """
        import psycopg
        from ..local.postgres import dsn
        listing = self._list(project)

        def restart(service: str) -> None:
            self._get(listing[service]["Id"]).restart(timeout=15)
            self._wait_ready(ctx.topology, service, project)

        def wait_for(what: str, query: str, port: int, *args) -> None:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with psycopg.connect(dsn(ctx, port, dbname="postgres"), autocommit=True) as conn:
                        if conn.execute(query, args).fetchone()[0]:
                            return
                except psycopg.OperationalError:
                    pass
                if time.monotonic() > deadline:
                    raise ServiceFailedError(f"postgres: {what} did not happen in 30 s")
                time.sleep(0.05)

        if grow:
            restart("postgres-replica")
            restart("postgres-primary")
        else:
            restart("postgres-primary")
            with psycopg.connect(dsn(ctx, ctx.ports.primary, dbname="postgres"), autocommit=True) as primary:
                target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            wait_for("the replica replaying the new max_connections",
                     "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", ctx.ports.replica, target)
            restart("postgres-replica")
        wait_for("streaming replication resuming",
                 "SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'", ctx.ports.primary)

    def _reload_postgres(self, ctx, port: int, topology: Topology, role: str) -> None:
        """pg_reload_conf(), then wait until the server reports the new values."""
        import psycopg
        from ..local.postgres import dsn
        from .config import postgres_settings
        expected = {"synchronous_commit": topology.postgres.synchronous_commit}
        if role == "replica":
            expected = {"recovery_min_apply_delay": str(topology.postgres.replica_delay_ms)}
        with psycopg.connect(dsn(ctx, port, dbname="postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 5
            while True:
                actual = {name: conn.execute("SELECT setting FROM pg_settings WHERE name = %s",
                                             (name,)).fetchone()[0] for name in expected}
                if actual == expected:
                    return
                if time.monotonic() > deadline:
                    raise ServiceFailedError(f"postgres-{role} did not take the new settings in 5 s: "
                                             f"expected {expected}, has {actual} "
                                             f"(rendered: {postgres_settings(topology, role)})")
                time.sleep(0.005)

    def _reload_nginx(self, project: str, drain: float = 0) -> None:
        container = self._get(self._list(project)["nginx"]["Id"])
        result = container.exec_run(["nginx-reload", str(int(drain))])
        if result.exit_code != 0:
            raise ServiceFailedError(f"nginx reload failed (exit {result.exit_code}): "
                                     f"{result.output.decode(errors='replace').strip()}")

    # -- waiting ----------------------------------------------------------------------------
    def _wait_healthy(self, project: str, services: list[str], timeout: float = 90) -> None:
        """Until Docker reports every one of `services` healthy (their compose health checks)."""
        deadline = time.monotonic() + timeout
        while True:
            listing = self._list(project)
            pending = []
            for service in services:
                c = listing.get(service)
                if c is None:
                    raise ServiceFailedError(f"{service}: its container disappeared")
                if c["State"] in ("exited", "dead"):
                    raise ServiceFailedError(f"{service} exited ({c['Status']}); its last log lines:\n"
                                             f"{self._tail(c['Id'])}")
                if "(unhealthy)" in c["Status"]:
                    raise ServiceFailedError(f"{service} is unhealthy: {self._health_log(c['Id'])}\n"
                                             f"its last log lines:\n{self._tail(c['Id'])}")
                if "(healthy)" not in c["Status"]:
                    pending.append(service)
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "; ".join(f"{s}: {self._health_log(listing[s]['Id'])}" for s in pending)
                raise ServiceFailedError(f"not healthy after {timeout:.0f} s: {', '.join(pending)} ({details})")
            time.sleep(0.1)

    def _wait_ready(self, topology: Topology, service: str, project: str, timeout: float = 60) -> None:
        """Until `service` answers from the host the way its health check asks it inside."""
        probe = self._probe(topology, service)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if probe():
                    return
            except Exception as exc:   # noqa: BLE001 - not up yet
                last = exc
            c = self._list(project).get(service)
            if c is None or c["State"] in ("exited", "dead"):
                tail = self._tail(c["Id"]) if c else "(no container)"
                raise ServiceFailedError(f"{service} exited before it answered; its last log lines:\n{tail}")
            time.sleep(0.02)
        raise ServiceFailedError(f"{service} did not answer in {timeout:.0f} s: {last}")

    def _probe(self, topology: Topology, service: str) -> Callable[[], bool]:
        ctx = self.context(topology)
        port = host_port(service, ctx.ports)
        if service.startswith("app-") or service == "nginx":
            path = "/nginx-health" if service == "nginx" else "/health"

            def http() -> bool:
                with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=1) as resp:
                    body = resp.read()
                return service == "nginx" or json.loads(body).get("replica") == service
            return http
        if service.startswith("postgres-"):
            def sql() -> bool:
                import psycopg
                from ..local.postgres import dsn
                with psycopg.connect(dsn(ctx, port, dbname="postgres"), autocommit=True) as conn:
                    return conn.execute("SELECT 1").fetchone() == (1,)
            return sql
        if service == "pgbouncer":
            from ..local.pgbouncer import admin
            return lambda: bool(admin(ctx, "SHOW VERSION"))
        if service == "redis":
            from ..local.redis import client as redis_client

            def ping() -> bool:
                conn = redis_client(ctx)
                try:
                    return bool(conn.ping())
                finally:
                    conn.close()
            return ping
        raise StackError(f"no probe for service {service!r}")

    def _tail(self, container_id: str, lines: int = 20) -> str:
        try:
            return self.client.api.logs(container_id, tail=lines).decode(errors="replace").rstrip()
        except Exception as exc:   # noqa: BLE001
            return f"(no logs: {exc})"

    def _health_log(self, container_id: str) -> str:
        try:
            health = self.client.api.inspect_container(container_id)["State"].get("Health") or {}
            log = health.get("Log") or []
            return (log[-1].get("Output") or "").strip() or f"exit {log[-1].get('ExitCode')}" if log else "no check yet"
        except Exception as exc:   # noqa: BLE001
            return f"(no health log: {exc})"

    # -- stopping ---------------------------------------------------------------------------
    def _stop(self, c: dict) -> None:
        timeout = int(c["Labels"].get("scalelab.stop-timeout", "10"))
        try:
            self.client.api.stop(c["Id"], timeout=timeout)
        except Exception as exc:   # noqa: BLE001 - already gone is fine
            if "No such container" not in str(exc):
                raise

    def _stop_remove(self, c: dict) -> None:
        self._stop(c)
        try:
            self.client.api.remove_container(c["Id"], force=True)
        except Exception as exc:   # noqa: BLE001
            if "No such container" not in str(exc) and "already in progress" not in str(exc):
                raise

    def _roll_back(self, project: str, old: Topology | None, created: list[str]) -> None:
        """After a failed change: remove what this call created, restore the old files."""
        try:
            listing = self._list(project)
            run_parallel([lambda s=s: self._stop_remove(listing[s]) for s in created if s in listing])
            if old is not None:
                refs = self.state.load().get("images") or {}
                if refs:
                    conf_changed, _, _ = self._write_files(project, old, refs)
                    listing = self._list(project)
                    if "docker/conf/nginx/upstream.conf" in conf_changed and \
                            listing.get("nginx", {}).get("State") == "running":
                        self._reload_nginx(project)
        except Exception:   # noqa: BLE001 - the original error matters more
            pass

    # -- faults (stack.fault calls these) ----------------------------------------------------
    def kill(self, service: str) -> str:
        """`docker kill` (SIGKILL) the service's container; up() starts it again."""
        return self._fault("kill", service)

    def pause(self, service: str) -> str:
        """`docker pause`: the container's processes are frozen (cgroup freezer)."""
        return self._fault("pause", service)

    def resume(self, service: str) -> str:
        """`docker unpause` what pause() froze."""
        return self._fault("resume", service)

    def _fault(self, action: str, service: str) -> str:
        saved = self.state.load()
        topology = Topology.from_state(saved)
        known = services_for(topology) if topology and saved.get("up") else []
        # Validated against the saved topology first: a bad name never reaches the engine.
        if not isinstance(service, str) or service not in known:
            raise UnknownServiceError(service, sorted(known))
        c = self._list(saved["project"]).get(service)
        if c is None or c["State"] not in ("running", "paused"):
            raise StackError(f"service {service!r} is not running ({c['State'] if c else 'no container'}): "
                             f"nothing to {action}. up() starts it.")
        if action == "kill":
            self.client.api.kill(c["Id"], signal="SIGKILL")
        elif action == "pause" and c["State"] == "running":
            self.client.api.pause(c["Id"])
        elif action == "resume" and c["State"] == "paused":
            self.client.api.unpause(c["Id"])
        return f"{action} {service} (container {c['Id'][:12]})"

    def down(self, purge: bool = False, progress: Progress | None = None) -> list[str]:
        """Stop and remove every container and the network. `purge=True` also deletes the data
        volumes and the state directory (secrets included)."""
        say = progress or _quiet
        if not self.state.path.exists():
            return []
        done: list[str] = []
        with self.state.locked():
            saved = self.state.load()
            project = saved.get("project")
            if project:
                existing = self._list(project)
                for rank in range(len(STOP_ORDER)):
                    batch = [s for s in existing if _stop_rank(s) == rank]
                    run_parallel([lambda s=s: self._stop_remove(existing[s]) for s in batch])
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
            if saved:
                self.state.save({**saved, "up": False})
        if purge:
            import shutil
            shutil.rmtree(self.state.path, ignore_errors=True)
            done.append(f"deleted {self.state.path}")
        return done


def _stop_rank(service: str) -> int:
    key = "app" if service.startswith("app-") else service
    for rank, stage in enumerate(STOP_ORDER):
        if key in stage:
            return rank
    return 0
