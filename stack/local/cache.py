"""A per-user cache shared by every local stack on this machine: things that cost seconds to make
and never change for a given input (a PostgreSQL cluster fresh from initdb and seeded; server
binaries copied where the service user can reach them).

Each entry is made once, under a file lock (parallel test workers and two terminals may ask at
the same moment), in a staging directory renamed into place only when complete, so a crash
half-way leaves nothing that looks usable. Entries are named by a hash of everything that
makes them, so a new PostgreSQL version or a new schema makes a new entry.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..errors import StackError
from ..files import make_private_dir
from .proc import RunAs

READY = ".scalelab-ready"


def cache_root(run_as: RunAs) -> Path:
    """SCALELAB_CACHE, else <tmp>/scalelab-cache-<uid>: ours only, but the service user may pass
    through it (as root, PostgreSQL runs as that user and must reach its template and binaries)."""
    root = Path(os.environ.get("SCALELAB_CACHE") or Path(tempfile.gettempdir()) / f"scalelab-cache-{os.getuid()}")
    make_private_dir(root, "cache directory", "SCALELAB_CACHE")   # refuses what someone else planted
    os.chmod(root, 0o711 if run_as.as_root else 0o700)
    return root


def key_of(*parts) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry(run_as: RunAs, name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The directory `<cache>/<name>-<key>`, made by `build(staging_dir)` the first time."""
    root = cache_root(run_as)
    final = root / f"{name}-{key}"
    if (final / READY).exists():
        return final
    with _locked(root / f".{name}-{key}.lock"):
        if (final / READY).exists():      # another process made it while we waited
            return final
        for leftover in root.glob(f".{name}-{key}.staging*"):   # a crashed build's; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.staging", dir=root))
        os.chmod(staging, 0o755)
        try:
            build(staging)
            (staging / READY).touch()
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final


# -- spare copies ---------------------------------------------------------------------------
# Copying a PostgreSQL template is ~1,300 small files: 0.3-1.5 s of kernel time on this kind of
# machine, more than everything else in a cold `up`. So the cache keeps a few copies made ahead
# of time, in the background, and a new stack takes one with a rename (same file system: O(1)).

def _spares(source: Path) -> Path:
    spares = source.parent / f"{source.name}.spares"
    spares.mkdir(exist_ok=True)
    os.chmod(spares, 0o711)
    return spares


def copy_tree(source: Path, dest: Path) -> None:
    """cp -a: keeps the service user's ownership and modes (PostgreSQL insists on 0700)."""
    result = subprocess.run(["cp", "-a", str(source), str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"copying {source} to {dest} failed: {result.stderr.strip()}")


def take_copy(source: Path, dest: Path, keep: int) -> str:
    """A copy of `source` at `dest` (which must not exist): a spare moved into place when one is
    ready, else copied now. Then `keep` spares are made again in the background. Returns how."""
    how = "copied"
    spares = _spares(source)
    for spare in sorted(spares.glob("ready-*")):
        try:
            os.rename(spare, dest)
            how = "spare"
            break
        except FileNotFoundError:     # another stack took this one first
            continue
        except OSError as exc:
            if exc.errno != errno.EXDEV:   # dest on another file system: copy instead
                raise
            break
    if how == "copied":
        copy_tree(source, dest)
    # Lowest CPU and I/O priority: the spares are for later, and what runs now (often a measurement
    # that starts right after this `up`) must not share the machine with them.
    idle_io = ["ionice", "-c", "3"] if shutil.which("ionice") else []
    subprocess.Popen([*idle_io, "nice", "-n", "19", sys.executable, "-m", "stack.local.cache", "refill",
                      str(source), str(keep)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return how


def refill(source: Path, keep: int) -> None:
    """Make spares of `source` until `keep` are ready; one refill at a time per source."""
    spares = _spares(source)
    with open(spares / ".refill.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return                      # another process is refilling
        for leftover in spares.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        while len(list(spares.glob("ready-*"))) < keep and (source.parent / READY).exists():
            name = uuid.uuid4().hex
            copy_tree(source, spares / f".staging-{name}")
            os.rename(spares / f".staging-{name}", spares / f"ready-{name}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "refill":
        refill(Path(sys.argv[2]), int(sys.argv[3]))
