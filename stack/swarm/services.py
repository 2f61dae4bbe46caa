"""One Swarm stack's services and tasks through the docker SDK: deploy, scale, update, wait, exec.

Used by stack.swarm.backend (which decides what to do, from stack.plan), so every
function here is one engine call or a wait on one. Services and tasks are read from the
manager, which sees every node; containers (containers(), exec, put_file) only on this
engine's node: on a multi-node swarm the app tasks of other nodes are not listed there.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from docker.errors import APIError, NotFound

from ..docker.engine import exec_in
from ..errors import ServiceFailedError, StackError

NAMESPACE = "com.docker.stack.namespace"
FAILED = ("failed", "rejected", "orphaned")


@dataclass(frozen=True)
class Placement:
    """One service's running tasks split by node: those on this engine's node (its container
    calls reach them) and those on other nodes (only on a multi-node swarm)."""
    node_name: str | None
    here: list[dict]
    elsewhere: list[dict]

    def ports(self) -> dict[int, int]:
        """{task slot: host port} of the tasks here (the engine reports the port it picked for
        each task's host-mode published port)."""
        found = {}
        for task in self.here:
            ports = (task["Status"].get("PortStatus") or {}).get("Ports") or []
            if ports:
                found[task["Slot"]] = ports[0]["PublishedPort"]
        return found


class SwarmServices:
    def __init__(self, client, stack: str):
        self.client, self.stack = client, stack

    def full_name(self, short: str) -> str:
        return f"{self.stack}_{short}"

    # -- reading -----------------------------------------------------------------------------
    def services(self) -> dict[str, dict]:
        """The stack's services by short name (app, nginx ...): their inspect data."""
        found = self.client.api.services(filters={"label": f"{NAMESPACE}={self.stack}"})
        return {s["Spec"]["Name"][len(self.stack) + 1:]: s for s in found}

    def tasks(self, short: str) -> list[dict]:
        return self.client.api.tasks(filters={"service": self.full_name(short)})

    def running_tasks(self, short: str) -> list[dict]:
        return [t for t in self.tasks(short) if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]

    def placement(self, short: str) -> Placement:
        info = self.client.info()
        node = info["Swarm"].get("NodeID")
        tasks = self.running_tasks(short)
        return Placement(info.get("Name"), [t for t in tasks if t.get("NodeID") == node],
                         [t for t in tasks if t.get("NodeID") != node])

    def node_names(self) -> dict[str, str]:
        """{node ID: hostname}; empty on a worker's engine, which cannot list nodes."""
        try:
            return {n["ID"]: n["Description"]["Hostname"] for n in self.client.api.nodes()}
        except APIError:
            return {}

    @staticmethod
    def container_id(task: dict) -> str | None:
        return (task["Status"].get("ContainerStatus") or {}).get("ContainerID")

    def containers(self) -> dict[str, dict]:
        """Running (or paused) containers by the name the course uses: app-1 ... app-N by task
        slot, the other services by their own name. One listing call."""
        found = self.client.api.containers(all=True, filters={"label": f"{NAMESPACE}={self.stack}"})
        result = {}
        for c in found:
            labels = c["Labels"]
            short = labels.get("com.docker.swarm.service.name", "")[len(self.stack) + 1:]
            if c["State"] not in ("running", "paused"):
                continue
            if short == "app":
                slot = labels.get("com.docker.swarm.task.name", "").rsplit(".", 2)[-2:][0]
                result[f"app-{slot}"] = c
            else:
                result[short] = c
        return result

    def held_ports(self) -> set[int]:
        """Host ports that this stack's containers on this node publish, also a task's that Swarm
        is restarting (its port is bound before its health check passes)."""
        return {port for _, port in published_bindings(self.containers())}

    # -- changing ------------------------------------------------------------------------------
    def deploy(self, stack_file: Path) -> None:
        """`docker stack deploy` of a (possibly partial) stack file: the services in it are
        created or updated, the others left alone (no --prune). No registry lookup."""
        docker = shutil.which("docker")
        if not docker:
            raise StackError("the `docker` CLI is not on PATH: the Swarm backend deploys with "
                             "`docker stack deploy` (Debian: apt-get install docker.io)")
        result = subprocess.run([docker, "stack", "deploy", "--resolve-image", "never", "-c", stack_file.name,
                                 self.stack], cwd=stack_file.parent, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"docker stack deploy -c {stack_file} {self.stack} failed "
                             f"(exit {result.returncode}): {result.stderr.strip()}")

    def scale(self, short: str, replicas: int) -> None:
        """Change only the replica count: the spec goes back exactly as deployed. docker-py's
        Service.scale() sends the spec the engine returns with its defaults inserted
        (`DNSConfig: {}`, RestartPolicy ...); Swarm compares task templates field by field, so
        that counted as a new template and every running task was replaced in a rolling update
        while nginx still sent to the old ones (a scale 4 -> 6 took 12-15 s; ~28% of GETs got 502)."""
        service = self.client.api.inspect_service(self.full_name(short))   # no defaults inserted
        spec = service["Spec"]
        self.client.api.update_service(
            service["ID"], service["Version"]["Index"], name=spec["Name"], labels=spec.get("Labels") or {},
            task_template=spec["TaskTemplate"], mode={"Replicated": {"Replicas": replicas}},
            update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"))

    def force_update(self, short: str) -> None:
        """A new task in place of the old one (same spec): how a Swarm service restarts."""
        self.client.services.get(self.full_name(short)).force_update()

    def remove(self, short: str) -> None:
        try:
            self.client.api.remove_service(self.full_name(short))
        except NotFound:
            pass

    def remove_all(self, shorts, until: str = "gone") -> None:
        """Remove every service, signal its containers here to stop (see stop_now), then wait
        until each one's containers are `gone` (down(): its network and volumes can go next) or
        only `stopped` (a server the plan stops: its port is free once its process exited; Swarm
        destroys the container 2-3 s later). Removed one after another and each waited for, the
        services cost ~6 s each. Every service is waited for even when one wait fails; the first
        failure is raised then."""
        if until not in ("gone", "stopped"):
            raise ValueError(f"until={until!r} is not allowed: 'gone' or 'stopped'")
        shorts = list(shorts)
        leaving = {short: self._running_containers(short) for short in shorts}   # before they are unlisted
        for short in shorts:
            self.remove(short)
        for short in shorts:
            self.stop_now(leaving[short])
        wait = self.wait_gone if until == "gone" else self.wait_stopped
        failure = None
        for short in shorts:
            try:
                wait(short)
            except ServiceFailedError as exc:
                failure = failure or exc
        if failure:
            raise failure

    def stop_leaving(self, short: str, replicas: int, spare=(), timeout: float = 3.0) -> None:
        """After a scale-down to `replicas`: once Swarm has marked the tasks that leave (a moment
        after the scale call), signal those on this node to stop now (see stop_now), but not the
        tasks whose ID is in `spare` (those nginx still names, had it been reloaded too early)."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks(short)
            if sum(t["DesiredState"] == "running" for t in tasks) <= replicas or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        here = self.node_id()
        self.stop_now([self.container_id(t) for t in tasks if t["DesiredState"] != "running"
                       and t["Status"]["State"] == "running" and t.get("NodeID") == here
                       and self.container_id(t) and t["ID"] not in spare])

    def stop_now(self, container_ids) -> None:
        """Send containers whose task Swarm is ending (desired state shutdown or remove) the signal
        Swarm's agent would send (their configured stop signal: the service's `stop_signal`, else
        the image's STOPSIGNAL), without waiting for the agent: before it signals a task it takes
        it out of Swarm's own name resolution and sleeps 2 s for that to gossip (moby's
        defaultGossipConvergeDelay; ~3 s in all here, seen with `docker events`). Nothing needs
        that wait: nginx names each app task and was reloaded without the leaving ones, and the
        plan has moved every client off a server before it stops it. The agent's own shutdown
        still follows (its SIGKILL after the grace period is the backstop). Only this engine's
        containers: tasks on other nodes wait for Swarm."""
        for cid in container_ids:
            try:
                signal = self.client.api.inspect_container(cid)["Config"].get("StopSignal") or "SIGTERM"
                self.client.api.kill(cid, signal=signal)
            except APIError:   # gone or exited meanwhile, or refused: the agent signals it ~3 s later
                pass

    def node_id(self) -> str | None:
        """This engine's node in the swarm (asked once: it cannot change while a stack runs)."""
        if not hasattr(self, "_node_id"):
            self._node_id = self.client.info()["Swarm"].get("NodeID")
        return self._node_id

    def _service_label(self, short: str) -> str:
        return f"com.docker.swarm.service.name={self.full_name(short)}"

    def _running_containers(self, short: str) -> list[str]:
        return [c["Id"] for c in self.client.api.containers(filters={"label": self._service_label(short)})]

    def prune_unused(self) -> list[str]:
        """Remove the stack's configs and secrets no service uses (rotated out)."""
        used = set()
        for service in self.services().values():
            spec = service["Spec"]["TaskTemplate"]["ContainerSpec"]
            used |= {c["ConfigName"] for c in spec.get("Configs") or []}
            used |= {s["SecretName"] for s in spec.get("Secrets") or []}
        removed = []
        label = {"label": f"{NAMESPACE}={self.stack}"}
        for kind in ("configs", "secrets"):
            for item in getattr(self.client.api, kind)(filters=label):
                if item["Spec"]["Name"] not in used:
                    try:
                        getattr(self.client.api, f"remove_{kind[:-1]}")(item["ID"])
                        removed.append(item["Spec"]["Name"])
                    except APIError:   # still used by a task that is stopping: the next prune
                        pass
        return removed

    # -- waiting -----------------------------------------------------------------------------------
    def wait_converged(self, *shorts: str, timeout: float = 120) -> None:
        """Until each service runs exactly its replicas, every one from its current spec (an
        update is complete) and no old task is still stopping. A task is `running` only once
        its health check passed (Swarm waits for it)."""
        deadline = time.monotonic() + timeout
        before = {s: self.failed_before(s) for s in shorts}
        pending = list(shorts)
        while pending:
            pending = [s for s in pending if not self._converged(s, deadline, timeout, before[s])]
            if pending:
                time.sleep(0.2)

    def _still_running(self, short: str, stopping: list[dict]) -> list[dict]:
        """The stopping tasks whose process still runs: one on this node whose container has
        exited (stop_now) is done, although Swarm reports it running until its agent's own
        shutdown (~3 s later) has run."""
        here = self.node_id()
        running = set(self._running_containers(short))
        return [t for t in stopping if t.get("NodeID") != here or t["Status"]["State"] != "running"
                or not self.container_id(t) or self.container_id(t) in running]

    def failed_before(self, short: str) -> set[str]:
        """IDs of the tasks that failed before a wait: a server killed three times in a lesson is
        no reason to give up on its restart (only failures during the wait count)."""
        return {t["ID"] for t in self.tasks(short) if t["Status"]["State"] in FAILED}

    def _converged(self, short: str, deadline: float, timeout: float, failed_before: set[str]) -> bool:
        service = self.client.api.inspect_service(self.full_name(short))
        wanted = service["Spec"]["Mode"]["Replicated"]["Replicas"]
        template = _comparable(service["Spec"]["TaskTemplate"])
        tasks = self.tasks(short)
        current = [t for t in tasks if t["DesiredState"] == "running"]
        running = [t for t in current if t["Status"]["State"] == "running" and _comparable(t["Spec"]) == template]
        stopping = [t for t in tasks if t["DesiredState"] != "running" and t["Status"]["State"] in
                    ("running", "starting", "preparing", "assigned", "accepted", "ready")]
        if stopping:
            stopping = self._still_running(short, stopping)
        updating = (service.get("UpdateStatus") or {}).get("State") in ("updating", "rollback_started")
        if len(running) == wanted and len(current) == wanted and not stopping and not updating:
            return True
        failed = [t for t in tasks if t["Status"]["State"] in FAILED and t["ID"] not in failed_before
                  and t["CreatedAt"] >= (service.get("UpdatedAt") or "")]
        if time.monotonic() > deadline or len(failed) >= 3:
            why = "; ".join(f"{t['Status']['State']}: {t['Status'].get('Err') or t['Status'].get('Message')}"
                            for t in failed[-3:]) or "no task failed"
            raise ServiceFailedError(f"{short}: {len(running)}/{wanted} tasks running after "
                                     f"{timeout:.0f} s ({why})")
        return False

    def wait_stopped(self, short: str, timeout: float = 60) -> None:
        """Until every container of the (removed) service has exited (one created but not yet
        started is waited for too: it could still start and bind the port)."""
        self._wait_containers(self._service_label(short), short, timeout,
                              left=lambda c: c["State"] not in ("exited", "dead"), what="still running")

    def wait_stack_gone(self, timeout: float = 60) -> None:
        """Until no container of the stack is left: a data volume can be deleted only then (a server
        the plan stopped may still be waiting for Swarm to destroy its exited container)."""
        self._wait_containers(f"{NAMESPACE}={self.stack}", f"stack {self.stack}", timeout)

    def wait_gone(self, short: str, timeout: float = 60) -> None:
        """Until no container of the (removed) service is left: its published port is free then."""
        self._wait_containers(self._service_label(short), short, timeout)

    def _wait_containers(self, label: str, name: str, timeout: float, left=lambda c: True,
                         what: str = "still there") -> None:
        """Until no container with `label` (running or not) is `left`."""
        deadline = time.monotonic() + timeout
        while [c for c in self.client.api.containers(all=True, filters={"label": label}) if left(c)]:
            if time.monotonic() > deadline:
                raise ServiceFailedError(f"{name}: containers {what} {timeout:.0f} s after removal")
            time.sleep(0.1)

    # -- inside a task's container ----------------------------------------------------------------
    def exec(self, container_id: str, cmd: list[str]) -> str:
        return exec_in(self.client, container_id, cmd)

    def put_file(self, container_id: str, path: str, text: str, uid: int, mode: int = 0o600) -> None:
        """Write one file into a running container (its directory must exist); 0600 by default:
        the app config holds the admin token."""
        directory, name = path.rsplit("/", 1)
        data = text.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, time.time()
            tar.addfile(info, io.BytesIO(data))
        if not self.client.api.put_archive(container_id, directory, buffer.getvalue()):
            raise StackError(f"could not write {path} into container {container_id[:12]}")

    def read_json_file(self, container_id: str, path: str) -> dict | None:
        try:
            return json.loads(self.exec(container_id, ["cat", path]))
        except (StackError, json.JSONDecodeError):
            return None


def _comparable(spec: dict) -> str:
    """What makes a task current: its container spec, resources and force-update counter."""
    keep = {k: spec.get(k) for k in ("ContainerSpec", "Resources", "ForceUpdate")}
    return json.dumps(keep, sort_keys=True)


def published_bindings(containers: dict) -> set[tuple[str, int]]:
    """(address, host port) of every port the containers publish (a container listing's "Ports")."""
    return {(p.get("IP") or "0.0.0.0", p["PublicPort"]) for c in containers.values() for p in c.get("Ports") or []
            if p.get("PublicPort")}
