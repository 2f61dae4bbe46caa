"""The Docker backend's state directory: enough to find the compose project again.

    <state>/state.json            project name, applied topology, image references (no secrets)
    <state>/secrets.json          generated passwords and the admin token (mode 0600)
    <state>/lock                  held while a process changes the stack
    <state>/project/compose.yml   the compose model this stack runs (informational: the
                                  containers are made from the same model with the SDK)
    <state>/project/docker/conf/  rendered config files, bind-mounted read-only
    <state>/project/docker/run/   files holding secrets, bind-mounted per service

The directory itself is 0700, so the world-readable files inside (each container
reads its own as an unprivileged user) stay private to their owner on the host.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..files import JsonState, make_private_dir, write_atomic
from ..secrets import new_secrets


def default_state_dir() -> Path:
    env = os.environ.get("SCALELAB_DOCKER_STATE")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"scalelab-docker-{os.getuid()}"


class DockerState(JsonState):
    state_mode = 0o600
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_state_dir()

    @property
    def project_dir(self) -> Path:
        return self.path / "project"

    @property
    def run_dir(self) -> Path:
        return self.project_dir / "docker" / "run"

    def prepare(self) -> None:
        self.ensure()

    def ensure(self) -> None:
        make_private_dir(self.path)
        os.chmod(self.path, 0o700)
        self.project_dir.mkdir(exist_ok=True)

    # -- secrets ------------------------------------------------------------------------
    def has_secrets(self) -> bool:
        return (self.path / "secrets.json").exists()

    def secrets_made_at(self) -> float:
        """When this state's passwords were generated (the file is written once, never again)."""
        return (self.path / "secrets.json").stat().st_mtime

    def secrets(self) -> dict:
        """Generated once per state directory; readable by the owner only."""
        path = self.path / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        self.ensure()
        values = new_secrets()
        write_atomic(path, json.dumps(values), 0o600)
        return values

    # -- project files ------------------------------------------------------------------
    def write_files(self, root: Path, files: dict[str, str], mode: int = 0o644) -> list[str]:
        """Write files that changed (atomically); returns the paths that did."""
        changed = []
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                same = path.read_text() == text
            except FileNotFoundError:
                same = False
            if not same:
                write_atomic(path, text, mode)
                changed.append(rel)
        return changed
