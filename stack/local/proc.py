"""Start, find and stop server processes that outlive the Python that started them.

A process is remembered as (pid, create_time) so a recycled pid is never
mistaken for ours. PostgreSQL and PgBouncer refuse to run as root, so when
the caller is root every server runs as an unprivileged service user.

The Python that starts servers is their parent (a notebook kernel lives for
hours): a reaper thread collects each one that dies, so no zombie lingers,
and writes how it ended (exit code or signal) where `status()` finds it.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import ServiceFailedError, StackError
from ..files import write_atomic

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
        """The live process, or None if it exited (zombies and killed ones count as exited)."""
        if not self.exists() or dying(self.pid):
            return None
        try:
            return psutil.Process(self.pid)
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def exists(self) -> bool:
        """Still there, dying or not (what a caller waiting for it to be gone needs)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05:
                return False
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(self.pid)
                return False
            return True
        except psutil.Error:
            return False


PF_EXITING = 0x4
SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def dying(pid: int) -> bool:
    """Killed but not yet gone: SIGKILL pending, or the kernel already tearing it down.

    Right after `kill -9` a big server (PostgreSQL unmapping its shared memory)
    still shows as running for a few milliseconds; `up()` must not count on it.
    Linux only (reads /proc); elsewhere, False.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    pending = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    flags = int(stat.rsplit(")", 1)[1].split()[6])    # field 9; the name may hold spaces
    return bool(pending & SIGKILL_BIT or flags & PF_EXITING)


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        _collect(pid, child)   # through Popen, so the exit status is recorded, not lost
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- reaping the servers this Python started --------------------------------------------
# pid -> (Popen, where to write how it ended). Polled, not SIGCHLD: a handler would
# fight the notebook kernel's own, and Popen.poll() is safe from any thread.
_children: dict[int, tuple[subprocess.Popen, Path | None]] = {}
_children_lock = threading.Lock()
_reaper: threading.Thread | None = None
REAP_INTERVAL_S = 0.1


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown"
    if returncode < 0:
        try:
            return f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def write_exit(path: Path | None, pid: int, returncode: int | None, by: str) -> None:
    if path is None:
        return
    info = {"pid": pid, "returncode": returncode, "how": describe_exit(returncode), "by": by,
            "at": time.time()}
    try:
        write_atomic(path, json.dumps(info), mode=0o600)
    except OSError:
        pass   # the state directory was purged meanwhile


def read_exit(path: Path, pid: int) -> dict | None:
    """How process `pid` ended, if a reaper or a fault recorded it."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("pid") == pid else None


def _collect(pid: int, child: tuple) -> bool:
    proc, exit_path = child
    if proc.poll() is None:
        return False
    with _children_lock:
        _children.pop(pid, None)
    # A fault that already recorded this death knows more (who sent the signal): keep it.
    known = read_exit(exit_path, pid) if exit_path else None
    if known is None or known.get("returncode") != proc.returncode:
        write_exit(exit_path, pid, proc.returncode, by="reaped by its parent")
    return True


def _reap_forever() -> None:
    while True:
        with _children_lock:
            children = list(_children.items())
        for pid, child in children:
            _collect(pid, child)
        time.sleep(REAP_INTERVAL_S)


def _adopt(proc: subprocess.Popen, exit_path: Path | None) -> None:
    global _reaper
    with _children_lock:
        _children[proc.pid] = (proc, exit_path)
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_forever, name="scalelab-reaper", daemon=True)
            _reaper.start()


def zombie_children() -> list[int]:
    """Children of this Python that died and were not collected (should stay empty)."""
    try:
        kids = psutil.Process().children()
    except psutil.Error:
        return []
    found = []
    for kid in kids:
        try:
            if kid.status() == psutil.STATUS_ZOMBIE:
                found.append(kid.pid)
        except psutil.Error:
            pass
    return found


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


def open_log(log_path: Path) -> int:
    """The log for appending, never through a symlink (logs live under /tmp by default)."""
    try:
        return os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        if Path(log_path).is_symlink():
            raise StackError(f"log file {log_path} is a symlink: refusing to follow it. Remove it "
                             f"and run up() again.") from None
        raise StackError(f"cannot open log file {log_path}: {exc.strerror}") from None


def spawn(argv: list[str], log_path: Path, run_as: RunAs | None = None, env: dict | None = None,
          cwd: Path | None = None, exit_path: Path | None = None) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start a server in its own session (it outlives this Python) with output to a log.

    `cwd` marks the process and every child it forks as this service's (see heal.py);
    `exit_path` is where the reaper writes how it ended.
    """
    log = open_log(log_path)
    try:
        proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env if env is not None else _clean_env(), cwd=cwd,
            **(run_as.popen_kwargs() if run_as else {}))
    finally:
        os.close(log)
    if exit_path is not None:
        Path(exit_path).unlink(missing_ok=True)
    _adopt(proc, exit_path)
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
        if not record.exists():
            return
        time.sleep(0.01)
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return
    while record.exists():
        time.sleep(0.01)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(check, what: str, timeout: float, record: ProcessRecord | None = None,
               log_path: Path | None = None, interval: float = 0.01, max_interval: float = 0.05):
    """Poll `check()` until it returns a truthy value; fail clearly with the log's tail.
    The pause grows from `interval` to `max_interval`: a cold `up` polls a dozen starting servers
    at once, and polling each every 10 ms took CPU the 2 cores needed for the starting itself."""
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
        interval = min(max_interval, interval * 1.5)
    reason = f" Last probe error: {last_error}." if last_error else ""
    raise ServiceFailedError(f"{what} not ready after {timeout:g} s.{reason}{_log_tail(log_path)}")


def _log_tail(log_path: Path | None, lines: int = 15) -> str:
    if not log_path or not Path(log_path).exists():
        return ""
    tail = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_path}:\n" + "\n".join("  " + line for line in tail)
