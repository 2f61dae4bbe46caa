"""A pytest plugin (loaded by pyproject's addopts, whatever paths pytest is given): every test
session gets its own stack state directory, port block and progress file.

Notebooks (nbval, nbclient) start the stack with the defaults; without this, running
`pytest lessons/` alone would drive the learner's own stack in /tmp/scalelab-<uid>.
`SCALELAB_TEST_PORT_SHIFT` moves every test port block, so two test runs on one
machine (two checkouts, parallel workers) never meet on a port.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PORT_SHIFT = int(os.environ.get("SCALELAB_TEST_PORT_SHIFT", "0"))
NOTEBOOK_BASE_PORT = 24000


def shifted_port(base: int) -> int:
    return base + PORT_SHIFT


def reachable_tmp_dir(prefix: str) -> Path:
    """A temp dir the stack's service user can enter (pytest's own tmp dirs are 0700, root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tempfile.gettempdir()))
    os.chmod(path, 0o711)
    return path


def pytest_configure(config):
    root = reachable_tmp_dir("scalelab-notebooks-")
    os.environ["SCALELAB_STATE"] = str(root / "state")
    os.environ["SCALELAB_BASE_PORT"] = str(shifted_port(NOTEBOOK_BASE_PORT))
    os.environ["SCALELAB_PROGRESS"] = str(root / "progress.json")
    # Notebooks run with SCALELAB_BACKEND=docker|swarm (the Docker tier) get their own project too.
    os.environ["SCALELAB_DOCKER_STATE"] = str(root / "docker-state")
    os.environ["SCALELAB_SWARM_STATE"] = str(root / "swarm-state")
    config._scalelab_notebook_root = root


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
