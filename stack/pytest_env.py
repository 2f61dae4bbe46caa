"""A pytest plugin (loaded by pyproject's addopts, whatever paths pytest is given): every test
session gets its own stack state directory, port block and progress file.

Notebooks (nbval, nbclient) start the stack with the defaults; without this, running
`pytest lessons/` alone would drive the learner's own stack in /tmp/scalelab-<uid>.
`SCALELAB_TEST_PORT_SHIFT` moves every test port block, so two test runs on one
machine (two checkouts, parallel workers) never meet on a port.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from . import quiet

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
    if "PYTEST_XDIST_WORKER" not in os.environ and config.getoption("numprocesses", None):
        # The controller of an xdist run: its workers (and their kernels) share one board.
        os.environ.setdefault(quiet.DIR_ENV, str(root / "quiet"))
    os.environ[quiet.WORKER_ENV] = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"


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


# -- measurement windows have the machine to themselves ------------------------------------------
# With several pytest-xdist workers (or test sessions given one SCALELAB_QUIET_DIR), every test item
# is recorded on a board (stack/quiet.py), and every measurement window (a load run, a lesson's
# experiment, a lab check that times the servers itself) waits until no other worker is
# running an item, while the others start none until it ends. Between windows the workers share the
# two cores. A lesson compares windows measured one after another (1 replica then 4, plain then
# early refresh): another worker's load in one window and not the next would change what it
# compares (with whole files run alone instead, three of four runs with shorter lists failed on such
# a comparison: lesson 2's vertical scaling, tests/test_cpu_quota.py, lesson 7's stampede).
# Tests that measure without the course's helpers run as one window per test item (WHOLE_WINDOWS).
# A run in series (no xdist worker, no SCALELAB_QUIET_DIR) records nothing.
WHOLE_WINDOWS = ("tests/test_cpu_quota.py", "tests/test_scenarios.py", "tests/test_load_runs.py")

# Longest files first (seconds measured in series here): a long file that starts last leaves one
# worker alone at the end. Files not listed follow in their usual order.
EXPECTED_SECONDS = {
    "tests/test_labs.py": 265, "lessons/01_what_scalability_means.ipynb": 75,
    "lessons/03_load_balancer_strategies.ipynb": 72, "tests/test_browser.py": 68, "tests/test_faults.py": 68,
    "lessons/02_horizontal_vs_vertical.ipynb": 67, "lessons/05_connection_pooling.ipynb": 58,
    "lessons/08_profile_first.ipynb": 54, "lessons/07_caching.ipynb": 54, "tests/test_scenarios.py": 46,
    "lessons/04_read_replicas.ipynb": 35, "tests/test_load_runs.py": 35, "lessons/06_sharding.ipynb": 27,
    "tests/test_stack.py": 24, "tests/test_sample.py": 18,
}


def _file(item) -> str:
    return item.nodeid.split("::", 1)[0]


def _whole_window(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in WHOLE_WINDOWS)


def pytest_collection_modifyitems(config, items):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    items.sort(key=lambda item: -EXPECTED_SECONDS.get(_file(item), 0))   # stable: each file stays in order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    board = quiet.board()
    if board is None:
        yield
        return
    asked = time.time()
    board.item_started()
    began = time.time()
    try:
        with quiet.window() if _whole_window(_file(item)) else contextlib.nullcontext():
            yield
    finally:
        board.item_ended(holding=quiet.holding())
        board.log(item.nodeid, asked, began)


# -- where the suite's time goes: seconds per file (setup + call + teardown), the slowest first --
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def _window_report(terminalreporter) -> None:
    """On a parallel run: how much of it the windows held the machine, and how long items waited."""
    directory = os.environ.get(quiet.DIR_ENV)
    log = Path(directory) / "log.tsv" if directory else None
    if "PYTEST_XDIST_WORKER" in os.environ or log is None or not log.exists():
        return
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    windows = [r for r in rows if r[1] == "window"]
    items = [r for r in rows if r[1] != "window"]
    held = sum(float(r[4]) - float(r[3]) for r in windows)
    waited_w = sum(float(r[3]) - float(r[2]) for r in windows)
    waited_i = sum(float(r[3]) - float(r[2]) for r in items)
    span = max(float(r[4]) for r in rows) - min(float(r[2]) for r in rows)
    terminalreporter.section("measurement windows (stack/quiet.py)")
    terminalreporter.write_line(f"{len(windows)} windows held the machine {held:.0f} s of {span:.0f} s; "
                                f"windows waited {waited_w:.0f} s for items, items waited {waited_i:.0f} s for windows")


def pytest_terminal_summary(terminalreporter):
    _window_report(terminalreporter)
    if len(_FILE_SECONDS) < 2:
        return
    slowest = sorted(_FILE_SECONDS.items(), key=lambda item: -item[1])[:15]
    terminalreporter.section("seconds per file (slowest 15)")
    for path, seconds in slowest:
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
