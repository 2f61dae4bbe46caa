"""One compose project's containers through the docker SDK: list, create, stop, wait, read logs.

Used by stack.docker.backend (which decides what to do, from stack.plan) so that
module only executes plans; everything here is one engine call or a wait on one.
"""
from __future__ import annotations

import time
from typing import Callable

from docker.errors import APIError, NotFound

from .. import clients
from ..errors import ServiceFailedError


class Containers:
    def __init__(self, client, project: str):
        self.client, self.project = client, project

    def listing(self) -> dict[str, dict]:
        """The project's containers by service (one API call): Id, State, Status, Labels ..."""
        found = self.client.api.containers(all=True, filters={"label": f"scalelab.project={self.project}"})
        return {c["Labels"]["scalelab.service"]: c for c in found}

    def get(self, service: str):
        return self.client.containers.get(self.listing()[service]["Id"])

    def create(self, service: str, spec: dict, network: str) -> None:
        from docker.types import EndpointConfig, Mount
        kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
        kwargs["mounts"] = [Mount(m["Target"], m["Source"], type=m["Type"], read_only=m["ReadOnly"])
                            for m in spec["_mounts"]]
        kwargs["labels"] = {**kwargs["labels"], "scalelab.stop-timeout": str(spec["_stop_timeout"])}
        # The API version this client negotiated (public attribute, not api._version).
        kwargs["networking_config"] = {network: EndpointConfig(self.client.api.api_version, aliases=[service])}
        self.client.containers.create(**kwargs).start()

    def stop_remove(self, c: dict) -> None:
        """Stop (within its own grace period) and remove; a container already gone is fine."""
        timeout = int(c["Labels"].get("scalelab.stop-timeout", "10"))
        try:
            self.client.api.stop(c["Id"], timeout=timeout)
            self.client.api.remove_container(c["Id"], force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:     # 409: its removal is already in progress
                raise

    def restart(self, service: str, timeout: int = 15) -> None:
        self.get(service).restart(timeout=timeout)

    # -- waiting ------------------------------------------------------------------------------
    def wait_healthy(self, services: list[str], timeout: float = 90) -> None:
        """Until Docker reports every one of `services` healthy (their compose health checks)."""
        deadline = time.monotonic() + timeout
        while True:
            listing = self.listing()
            pending = []
            for service in services:
                c = listing.get(service)
                if c is None:
                    raise ServiceFailedError(f"{service}: its container disappeared")
                if c["State"] in ("exited", "dead"):
                    raise ServiceFailedError(f"{service} exited ({c['Status']}); its last log lines:\n"
                                             f"{self.tail(c['Id'])}")
                if "(unhealthy)" in c["Status"]:
                    raise ServiceFailedError(f"{service} is unhealthy: {self.health_log(c['Id'])}\n"
                                             f"its last log lines:\n{self.tail(c['Id'])}")
                if "(healthy)" not in c["Status"]:
                    pending.append(service)
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "; ".join(f"{s}: {self.health_log(listing[s]['Id'])}" for s in pending)
                raise ServiceFailedError(f"not healthy after {timeout:.0f} s: {', '.join(pending)} ({details})")
            time.sleep(0.1)

    def wait_ready(self, target, service: str, timeout: float = 60) -> None:
        """Until `service` answers from the host (stack.clients.probe), every 20 ms: quicker
        than waiting for Docker's next health check."""
        probe: Callable[[], bool] = clients.probe(target, service)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if probe():
                    return
            except Exception as exc:   # noqa: BLE001 - not up yet: any client error means "try again"
                last = exc
            c = self.listing().get(service)
            if c is None or c["State"] in ("exited", "dead"):
                tail = self.tail(c["Id"]) if c else "(no container)"
                raise ServiceFailedError(f"{service} exited before it answered; its last log lines:\n{tail}")
            time.sleep(0.02)
        raise ServiceFailedError(f"{service} did not answer in {timeout:.0f} s: {last}")

    # -- what went wrong ----------------------------------------------------------------------
    def tail(self, container_id: str, lines: int = 20) -> str:
        try:
            return self.client.api.logs(container_id, tail=lines).decode(errors="replace").rstrip()
        except (NotFound, APIError) as exc:
            return f"(no logs: {exc})"

    def health_log(self, container_id: str) -> str:
        try:
            health = self.client.api.inspect_container(container_id)["State"].get("Health") or {}
        except (NotFound, APIError) as exc:
            return f"(no health log: {exc})"
        log = health.get("Log") or []
        if not log:
            return "no check yet"
        return (log[-1].get("Output") or "").strip() or f"exit {log[-1].get('ExitCode')}"
