"""Start, find and stop server processes that outlive the Python that started them.

A process is remembered as (pid, create_time) so a recycled pid is never
mistaken for ours. PostgreSQL and PgBouncer refuse to run as root, so when
the caller is root every server runs as an unprivileged service user.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import ServiceFailedError, StackError

SERVICE_USER = "scalelab"


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float

    def to_dict(self) -> dict:
        return {"pid": self.pid, "create_time": self.create_time}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ProcessRecord | None":
        return cls(data["pid"], data["create_time"]) if data else None

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (zombies count as exited)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(self.pid)
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class RunAs:
    """Who the servers run as: the caller, or the service user when the caller is root."""

    def __init__(self):
        self.as_root = os.geteuid() == 0 if hasattr(os, "geteuid") else False
        self.user = SERVICE_USER if self.as_root else None
        if self.as_root:
            self._ensure_user()
            entry = pwd.getpwnam(SERVICE_USER)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    @staticmethod
    def _ensure_user() -> None:
        try:
            pwd.getpwnam(SERVICE_USER)
            return
        except KeyError:
            pass
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                 SERVICE_USER], capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"running as root, the servers need an unprivileged user {SERVICE_USER!r}, "
                             f"and `useradd` failed: {result.stderr.strip()}. Create it by hand or run "
                             f"as a normal user.")

    def popen_kwargs(self) -> dict:
        if not self.as_root:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, *paths: Path) -> None:
        """Give paths to the service user (only needed, and only possible, as root)."""
        if self.as_root:
            for path in paths:
                os.chown(path, self.uid, self.gid)

    def can_reach(self, path: Path) -> bool:
        """Whether the service user can traverse to and execute `path`."""
        if not self.as_root:
            return True
        path = Path(path).resolve()
        for parent in [*reversed(path.parents), path]:
            st = parent.stat()
            others_ok = st.st_mode & 0o001 or (st.st_uid == self.uid and st.st_mode & 0o100)
            if not others_ok:
                return False
        return True


def spawn(argv: list[str], log_path: Path, run_as: RunAs | None = None, env: dict | None = None,
          cwd: Path | None = None) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start a server in its own session (it outlives this Python) with output to a log."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env if env is not None else _clean_env(), cwd=cwd,
            **(run_as.popen_kwargs() if run_as else {}))
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = 0.0
    return proc, ProcessRecord(proc.pid, created)


def _clean_env() -> dict:
    """A minimal environment: no HOME of root's leaking into servers' config."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def stop(record: ProcessRecord | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a process and wait until it is gone; SIGKILL if it outstays `timeout`."""
    proc = record.process() if record else None
    if proc is None:
        return
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record.alive():
            return
        time.sleep(0.01)
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return
    while record.alive():
        time.sleep(0.01)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(check, what: str, timeout: float, record: ProcessRecord | None = None,
               log_path: Path | None = None, interval: float = 0.01):
    """Poll `check()` until it returns a truthy value; fail clearly with the log's tail."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways while starting
            last_error = exc
        if record is not None and not record.alive():
            raise ServiceFailedError(f"{what} exited while starting.{_log_tail(log_path)}")
        time.sleep(interval)
    reason = f" Last probe error: {last_error}." if last_error else ""
    raise ServiceFailedError(f"{what} not ready after {timeout:g} s.{reason}{_log_tail(log_path)}")


def _log_tail(log_path: Path | None, lines: int = 15) -> str:
    if not log_path or not Path(log_path).exists():
        return ""
    tail = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_path}:\n" + "\n".join("  " + line for line in tail)
