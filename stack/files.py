"""Small pieces both backends use: atomic file writes, a private state directory, a locked JSON
state file, parallel jobs."""
from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .errors import StackError


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file so readers (a server reloading, a bind mount) see the old or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_private_dir(path: Path, what: str = "state directory", env: str = "SCALELAB_STATE") -> None:
    """Create `path` owner-only; refuse one that someone else could have planted.

    It lives under /tmp by default, where any user can create a name first: a
    symlink or a directory owned by someone else would hand them our secrets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise StackError(f"{what} {path} is a symlink: refusing to use it (under a shared "
                         f"temp dir anyone can plant one). Remove it, or choose {env}=<your own dir>.")
    if not stat.S_ISDIR(st.st_mode):
        raise StackError(f"{what} {path} exists and is not a directory: remove it or choose "
                         f"another {env}.")
    if st.st_uid != os.geteuid():
        raise StackError(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid "
                         f"{os.geteuid()}): refusing to use it. Choose {env}=<your own dir>.")


class JsonState:
    """state.json and its lock in `self.path`: what a second process reads to re-attach."""
    path: Path
    state_mode = 0o644

    def prepare(self) -> None:
        """Make the directory ready before the lock is taken (subclasses add more)."""
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def load(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}

    def save(self, state: dict) -> None:
        write_atomic(self.state_file, json.dumps(state, indent=2, sort_keys=True), self.state_mode)

    @contextmanager
    def locked(self):
        """Only one process changes the stack at a time; others wait their turn."""
        self.prepare()
        with open(self.path / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def run_parallel(jobs: list) -> None:
    """Run jobs in threads; re-raise the first failure after all have finished."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
