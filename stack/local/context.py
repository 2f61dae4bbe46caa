"""What every service module needs to start, probe, change or stop its process."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..binaries import Binaries
from ..ports import Ports
from ..render.addressing import Addressing, loopback
from ..topology import Topology
from .proc import ProcessRecord, RunAs, spawn
from .state import StateDir


@dataclass
class Context:
    state: StateDir
    bins: Binaries             # already reachable by the service user
    topology: Topology
    secrets: dict

    @property
    def ports(self) -> Ports:
        return Ports(self.topology.base_port)

    @property
    def addressing(self) -> Addressing:
        """How one service reaches another: loopback at the block's ports."""
        return loopback(self.ports)

    @property
    def run_as(self) -> RunAs:
        return self.state.run_as

    def spawn_server(self, service: str, argv: list, env: dict | None = None,
                     as_service_user: bool = True) -> ProcessRecord:
        # A server runs in its own directory: every process it forks keeps (or, PostgreSQL,
        # moves below) that cwd, which is how heal.py finds the ones a crash left behind.
        cwd = self.dir(service) if as_service_user else None
        _, record = spawn(argv, self.state.log(service), self.run_as if as_service_user else None, env=env,
                          cwd=cwd, exit_path=self.state.exit_file(service))
        return record

    def dir(self, service: str) -> Path:
        return self.state.service_dir(service)
