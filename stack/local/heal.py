"""Clearing what a crashed service left behind, so the next `up` starts it on the first try.

A `kill -9` of a server can leave, for a second or two:
- the process itself as a zombie (PID 1 reaps slowly here, and `kill(pid, 0)`
  succeeds on a zombie, so PostgreSQL takes its postmaster.pid for a live lock);
- children still running or exiting (PostgreSQL backends, nginx workers that
  keep the port bound);
- a postmaster.pid and a System V shared memory segment those children hold.

Every server runs in its own directory (Context.spawn_server), so its
leftovers are the processes of the service user whose cwd lies in that
directory. A lock is removed only when no live server holds it: a live
postmaster named in postmaster.pid is adopted, never killed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from pathlib import Path

import psutil

from .proc import ProcessRecord

LEFTOVER_WAIT_S = 2.0


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cwd_under(proc: psutil.Process, root: str) -> bool:
    try:
        cwd = proc.cwd()
    except psutil.Error:
        return False
    return cwd == root or cwd.startswith(root + os.sep)


def leftovers(directory: Path, uid: int) -> list[psutil.Process]:
    """Live processes of user `uid` running in `directory` (or below it)."""
    root = str(Path(directory).resolve())
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is None or uids.real != uid or proc.pid == os.getpid():
            continue
        if _cwd_under(proc, root) and _alive(proc):
            found.append(proc)
    return found


def kill_leftovers(directory: Path, uid: int, timeout: float = LEFTOVER_WAIT_S) -> int:
    """SIGKILL what still runs in `directory` and wait until it is gone (a zombie holds nothing)."""
    procs = leftovers(directory, uid)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(procs)


# -- PostgreSQL's lock file and shared memory -------------------------------------------------

def _lock_fields(pidfile: Path) -> tuple[int | None, int | None]:
    """(postmaster pid, shared memory id) from postmaster.pid; None where unreadable."""
    try:
        lines = pidfile.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    pid = int(lines[0]) if lines and lines[0].strip().lstrip("-").isdigit() else None
    shmid = None
    if len(lines) > 6 and len(lines[6].split()) == 2 and lines[6].split()[1].isdigit():
        shmid = int(lines[6].split()[1])
    return pid, shmid


def live_postmaster(data: Path) -> ProcessRecord | None:
    """The server that holds `data`'s lock, if one really runs (not a zombie, not a recycled pid)."""
    pid, _ = _lock_fields(data / "postmaster.pid")
    if pid is None:
        return None
    try:
        proc = psutil.Process(abs(pid))
        if _alive(proc) and _cwd_under(proc, str(data.resolve())):
            return ProcessRecord(proc.pid, proc.create_time())
    except psutil.Error:
        pass
    return None


def _segment_attachments(shmid: int) -> int | None:
    """How many processes attach System V segment `shmid`; None if it does not exist."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        cols = row.split()
        if len(cols) > 6 and cols[1] == str(shmid):
            return int(cols[6])
    return None


def remove_orphan_segment(shmid: int) -> bool:
    """Remove a segment no process attaches any more (a crashed server's)."""
    if _segment_attachments(shmid) != 0:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    IPC_RMID = 0
    return libc.shmctl(shmid, IPC_RMID, None) == 0


def clear_postgres(service_dir: Path, data: Path, uid: int) -> list[str]:
    """Make `data` startable after a crash. Call only when no live postmaster holds it."""
    done = []
    count = kill_leftovers(service_dir, uid)
    if count:
        done.append(f"{count} leftover process{'es' if count > 1 else ''}")
    pidfile = data / "postmaster.pid"
    _, shmid = _lock_fields(pidfile)
    if shmid is not None and remove_orphan_segment(shmid):
        done.append(f"orphaned shared memory segment {shmid}")
    if pidfile.exists():
        pidfile.unlink()
        done.append("stale postmaster.pid")
    return done
