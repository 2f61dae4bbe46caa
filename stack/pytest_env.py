"""A pytest plugin (loaded by pyproject's addopts, whatever paths pytest is given): every test
session gets its own stack state directory, port block and progress file.

Notebooks (nbval, nbclient) start the stack with the defaults; without this, running
`pytest lessons/` alone would drive the learner's own stack in /tmp/scalelab-<uid>.
`SCALELAB_TEST_PORT_SHIFT` moves every test port block, so two test runs on one
machine (two checkouts, parallel workers) never meet on a port.
"""
from __future__ import annotations

import fcntl
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# pytest-xdist runs each worker (gw0, gw1, ...) in its own process: each gets its own port block.
WORKER_PORT_STRIDE = 5000


def _worker_shift() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) * WORKER_PORT_STRIDE if worker.startswith("gw") else 0


PORT_SHIFT = int(os.environ.get("SCALELAB_TEST_PORT_SHIFT", "0")) + _worker_shift()
NOTEBOOK_BASE_PORT = 24000
HIGHEST_TEST_PORT = 24100        # the test port blocks span 20000-24100 before any shift


def shifted_port(base: int) -> int:
    return base + PORT_SHIFT


def reachable_tmp_dir(prefix: str) -> Path:
    """A temp dir the stack's service user can enter (pytest's own tmp dirs are 0700, root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tempfile.gettempdir()))
    os.chmod(path, 0o711)
    return path


def pytest_configure(config):
    if shifted_port(HIGHEST_TEST_PORT) >= 32768:
        raise pytest.UsageError(
            f"test ports would reach {shifted_port(HIGHEST_TEST_PORT)} (SCALELAB_TEST_PORT_SHIFT="
            f"{os.environ.get('SCALELAB_TEST_PORT_SHIFT', '0')}, xdist worker "
            f"{os.environ.get('PYTEST_XDIST_WORKER', 'none')}: +{_worker_shift()}); they must stay below "
            "32768, where Linux hands out ports to outgoing connections: use a smaller shift or fewer workers")
    root = reachable_tmp_dir("scalelab-notebooks-")
    os.environ["SCALELAB_STATE"] = str(root / "state")
    os.environ["SCALELAB_BASE_PORT"] = str(shifted_port(NOTEBOOK_BASE_PORT))
    os.environ["SCALELAB_PROGRESS"] = str(root / "progress.json")
    # Notebooks run with SCALELAB_BACKEND=docker|swarm (the Docker tier) get their own project too.
    os.environ["SCALELAB_DOCKER_STATE"] = str(root / "docker-state")
    os.environ["SCALELAB_SWARM_STATE"] = str(root / "swarm-state")
    config._scalelab_notebook_root = root
    if "PYTEST_XDIST_WORKER" not in os.environ:          # the controller (or a run in series)
        os.environ["SCALELAB_TEST_FILE_LOCK"] = str(root / "files.lock")   # xdist's workers inherit it


def pytest_unconfigure(config):
    root = getattr(config, "_scalelab_notebook_root", None)
    if root is not None:
        from .local.backend import LocalStack
        LocalStack(root / "state").down()
        for backend, state in (("docker", "docker-state"), ("swarm", "swarm-state")):
            if (root / state).exists():    # a notebook started a stack on this backend: remove it
                from . import get_stack
                get_stack(root / state, backend=backend).down(purge=True)
        shutil.rmtree(root, ignore_errors=True)


# -- files that run alone ------------------------------------------------------------------------
# Every lesson, and the tests that compare rates or tail latencies measured in separate windows on a
# CPU-bound stack (a quota on and off; p99 before and after a fix or a wrong fix; the generator's
# send lag). A lesson compares windows measured one after the other (1 replica then 4, plain then
# early refresh, ...): another worker's load, heavier in one window than in the next, changes what
# it compares. Of four runs with two workers and shorter lists (none; lessons 1-2; lessons 1, 2, 5, 8
# and the three tests), three failed, each on one such comparison: lesson 2's vertical scaling,
# tests/test_cpu_quota.py, lesson 7's stampede. Such a
# file waits until the other pytest-xdist workers have finished their current file, and they start
# no new one until it is done; the rest (unit tests, the labs' checks, faults, the browser, ...)
# share the machine. A run in series (no xdist worker) neither reorders nor locks anything.
RUNS_ALONE = ("lessons/*.ipynb", "tests/test_cpu_quota.py", "tests/test_scenarios.py", "tests/test_load_runs.py")


def _file(item) -> str:
    return item.nodeid.split("::", 1)[0]


def _runs_alone(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in RUNS_ALONE)


def pytest_collection_modifyitems(config, items):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    # Files that run alone go first: then the others wait for them at the start, not behind a long file.
    items.sort(key=lambda item: not _runs_alone(_file(item)))      # stable: each file stays in order


class FileLock:
    """Shared for an ordinary file, exclusive for one that runs alone. A gate taken around every
    acquisition lets a waiting exclusive holder in before new shared ones (no starvation)."""

    def __init__(self, path: str):
        self.main, self.gate = open(path, "a"), open(path + ".gate", "a")

    def acquire(self, alone: bool) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.main, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)

    def release(self) -> None:
        fcntl.flock(self.main, fcntl.LOCK_UN)


_LOCK: dict = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("SCALELAB_TEST_FILE_LOCK")
    if "PYTEST_XDIST_WORKER" not in os.environ or not path:
        yield
        return
    if _LOCK.get("file") != _file(item):
        _LOCK.setdefault("lock", FileLock(path)).acquire(alone=_runs_alone(_file(item)))
        _LOCK["file"] = _file(item)
    yield
    if nextitem is None or _file(nextitem) != _file(item):
        _LOCK["lock"].release()
        _LOCK["file"] = None


# -- where the suite's time goes: seconds per file (setup + call + teardown), the slowest first --
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if len(_FILE_SECONDS) < 2:
        return
    slowest = sorted(_FILE_SECONDS.items(), key=lambda item: -item[1])[:15]
    terminalreporter.section("seconds per file (slowest 15)")
    for path, seconds in slowest:
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
