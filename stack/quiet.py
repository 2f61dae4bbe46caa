"""Measurement windows that have the machine to themselves when test workers share it.

    with quiet.window():            # a load run, a timed race, a profile: anything compared later
        result = run_load(spec)

    @quiet.measurement              # the same, for a whole function
    def stampede(stack, ...): ...

A course measurement compares windows taken one after another (1 replica then 4, plain then early
refresh). On two cores, another test worker's work running in one window and not in the next
changes what is compared. So when tests run on several workers (`SCALELAB_QUIET_DIR` names a
directory they share), a window waits until no other worker is running a test item, and other
workers start no new item until it ends; between windows (starting stacks, reshaping them,
plotting) the workers share the machine. Without `SCALELAB_QUIET_DIR` (a learner, a run in
series) a window costs nothing.

The board (`board.json`, guarded by `board.lock`) records per worker: the pid running a test
item, the pids inside windows, and the windows waiting (pid, ticket). A worker whose item is
waiting for a window counts as idle to the others (else two items that each open a window would
wait for each other). Entries of dead processes are dropped, so a killed worker blocks nobody.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import threading
import time
from pathlib import Path

DIR_ENV = "SCALELAB_QUIET_DIR"          # shared by every worker (and the kernels they start)
WORKER_ENV = "SCALELAB_QUIET_WORKER"    # which worker this process (or its parent) works for
POLL_S = 0.02
WAIT_LIMIT_S = 900.0                    # pytest's own timeout; a wait this long is a bug, said so


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped, holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Board:
    """The shared record of items and windows per worker (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, worker: str):
        self.dir, self.worker = Path(directory), worker
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _state(self):
        with open(self.dir / "board.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.dir / "board.json"
            try:
                state = json.loads(path.read_text()) if path.exists() else {}
            except ValueError:
                state = {}
            state.setdefault("workers", {})
            state.setdefault("ticket", 0)
            for entry in state["workers"].values():         # a killed process holds nothing
                if entry.get("item") and not _alive(entry["item"]):
                    entry["item"] = None
                entry["windows"] = [p for p in entry.get("windows", []) if _alive(p)]
                entry["waiting"] = [w for w in entry.get("waiting", []) if _alive(w[0])]
            yield state
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(path)

    def _mine(self, state) -> dict:
        return state["workers"].setdefault(self.worker, {"item": None, "windows": [], "waiting": []})

    def _others(self, state):
        return [e for w, e in state["workers"].items() if w != self.worker]

    def _attempt(self, try_once) -> bool:
        with self._state() as state:
            return try_once(state)

    def holders(self) -> dict:
        """What the other workers hold or wait for (for a wait that took too long)."""
        with self._state() as state:
            return {w: e for w, e in state["workers"].items() if w != self.worker}

    # -- test items (the pytest plugin, around each item) --
    def item_started(self, pid: int | None = None) -> None:
        """Wait until no other worker is in a window or waiting for one, then record the item.
        A worker that holds a window itself (a dashboard's load, running across a notebook's cells)
        goes on: the others' windows wait for it anyway, and its own cells must run to end it."""
        def try_once(state):
            others = self._others(state)
            if any(e["windows"] for e in others):
                return False
            if any(e["waiting"] for e in others) and not self._mine(state)["windows"]:
                return False
            self._mine(state)["item"] = pid or os.getpid()
            return True
        _poll(lambda: self._attempt(try_once), self, "a test item")

    def item_ended(self, holding: bool = False) -> None:
        """The item is over. Unless this process still holds a window on purpose (`holding`: a
        dashboard's load across cells), a window or wait an interrupt left behind is dropped too:
        it must not hold the other workers forever."""
        pid = os.getpid()
        with self._state() as state:
            mine = self._mine(state)
            mine["item"] = None
            if not holding:
                mine["windows"] = [p for p in mine["windows"] if p != pid]
                mine["waiting"] = [w for w in mine["waiting"] if w[0] != pid]

    # -- windows --
    def window_requested(self, pid: int | None = None) -> int:
        with self._state() as state:
            state["ticket"] += 1
            self._mine(state)["waiting"].append([pid or os.getpid(), state["ticket"]])
            return state["ticket"]

    def window_granted(self, ticket: int, pid: int | None = None) -> bool:
        """One attempt: the oldest waiting window goes first, once every other worker is idle
        (no item, or an item that is itself waiting for a window) and in no window."""
        with self._state() as state:
            mine = self._mine(state)
            # A worker already in a window has the machine: its other processes (a test's child,
            # a kernel) join it at once; waiting behind a later ticket would wait for itself.
            if not mine["windows"]:
                waiting = [w[1] for e in state["workers"].values() for w in e["waiting"]]
                if ticket != min(waiting, default=ticket):
                    return False
                for e in self._others(state):
                    if e["windows"] or (e["item"] and not e["waiting"]):
                        return False
            mine["waiting"] = [w for w in mine["waiting"] if w[1] != ticket]
            mine["windows"].append(pid or os.getpid())
            return True

    def window_ended(self, pid: int | None = None) -> None:
        with self._state() as state:
            windows = self._mine(state)["windows"]
            if (pid or os.getpid()) in windows:      # gone if the board was reset meanwhile
                windows.remove(pid or os.getpid())

    def log(self, what: str, asked: float, began: float) -> None:
        """One line per item or window (times from time.time()): where a parallel run's time went."""
        with open(self.dir / "log.tsv", "a") as f:
            f.write(f"{self.worker}\t{what}\t{asked:.3f}\t{began:.3f}\t{time.time():.3f}\n")

    def window_abandoned(self, ticket: int) -> None:
        with self._state() as state:
            mine = self._mine(state)
            mine["waiting"] = [w for w in mine["waiting"] if w[1] != ticket]


def board() -> Board | None:
    directory, worker = os.environ.get(DIR_ENV), os.environ.get(WORKER_ENV)
    return Board(directory, worker) if directory and worker else None


# Threads of one process share its window: the first one in opens it, the last one out closes it
# (a lesson's reader threads, a load run inside a measured function).
_held = {"count": 0}
_held_lock = threading.Lock()
_opening = threading.Lock()


class _Abandoned(Exception):
    """The caller stopped waiting (its coroutine was cancelled)."""


def _reset_after_fork() -> None:
    # A forked child starts with no window of its own, whatever a parent's thread held or awaited.
    global _held_lock, _opening
    _held_lock, _opening = threading.Lock(), threading.Lock()
    _held.clear()
    _held["count"] = 0


os.register_at_fork(after_in_child=_reset_after_fork)


def _poll(attempt, b: Board, what: str, abandoned: threading.Event | None = None) -> None:
    """Until `attempt()` succeeds; _Abandoned once `abandoned` is set, TimeoutError past WAIT_LIMIT_S."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not attempt():
        if abandoned is not None and abandoned.is_set():
            raise _Abandoned
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} waited {WAIT_LIMIT_S:.0f} s for other test workers: {b.holders()}")
        time.sleep(POLL_S)


def holding() -> bool:
    """Whether this process is inside a window now."""
    return _held["count"] > 0


def _enter_blocking(b: Board, abandoned: threading.Event | None = None) -> None:
    with _opening:
        with _held_lock:
            if _held["count"]:
                _held["count"] += 1
                return
        asked = time.time()
        ticket = b.window_requested()
        try:
            _poll(lambda: b.window_granted(ticket), b, "a measurement window", abandoned)
        except BaseException:
            b.window_abandoned(ticket)
            raise
        with _held_lock:
            _held["count"] += 1
            _held["since"] = (asked, time.time())


def _exit(b: Board) -> None:
    with _held_lock:
        _held["count"] -= 1
        last = _held["count"] == 0
        since = _held.get("since")
    if last:
        b.window_ended()
        b.log("window", *since)


@contextlib.contextmanager
def window():
    b = board()
    if b is None:
        yield
        return
    _enter_blocking(b)
    try:
        yield
    finally:
        _exit(b)


@contextlib.asynccontextmanager
async def async_window():
    """The same for a coroutine: the wait runs in a thread, so the event loop keeps running."""
    b = board()
    if b is None:
        yield
        return
    # The wait runs in a thread, which asyncio cannot cancel: if the coroutine is cancelled (a
    # dashboard stopped before its load began), the thread stops waiting at its next poll, and a
    # window granted in the meantime is given back.
    claim = {"entered": False}
    abandoned = threading.Event()

    def enter():
        try:
            _enter_blocking(b, abandoned)
        except _Abandoned:
            return
        with _held_lock:
            if not abandoned.is_set():
                claim["entered"] = True
                return
        _exit(b)

    try:
        await asyncio.get_running_loop().run_in_executor(None, enter)
    except BaseException:
        with _held_lock:
            abandoned.set()
            entered = claim["entered"]
        if entered:
            _exit(b)
        raise
    try:
        yield
    finally:
        _exit(b)


def measurement(fn):
    """Run the whole function in one window."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with window():
            return fn(*args, **kwargs)
    return wrapped
