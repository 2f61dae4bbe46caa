"""Shared helpers for tests that talk to a real stack."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from stack.local.backend import LocalStack
from stack.topology import Topology


from stack.pytest_env import reachable_tmp_dir, shifted_port  # noqa: F401 - tests import them from here


DOCKER_TIER = ("test_docker_stack.py", "test_swarm_stack.py", "test_swarm_multinode.py")


def pytest_ignore_collect(collection_path, config):
    """The Docker tier needs an engine: `make test-docker` starts one and runs it."""
    if collection_path.name in DOCKER_TIER and os.environ.get("SCALELAB_DOCKER_TESTS") != "1":
        return True
    return None


def pytest_report_header(config):
    if os.environ.get("SCALELAB_DOCKER_TESTS") != "1":
        return f"Docker tier not collected ({', '.join(DOCKER_TIER)}): `make test-docker` runs it"
    return None


def request(port: int, method: str, path: str, body: dict | None = None, timeout: float = 5.0):
    """One HTTP request on a fresh connection: (status, headers, parsed JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
        resp = conn.getresponse()
        data = resp.read()
        is_json = resp.getheader("content-type", "").startswith("application/json")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if is_json else data
    finally:
        conn.close()


class BackgroundThreads:
    """Threads in `self._threads` that run until the `with` block ends (`self._stop` is set)."""
    _threads: list
    _stop: threading.Event
    join_timeout_s = 10.0

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(self.join_timeout_s)


class Trickle(BackgroundThreads):
    """Light, steady background traffic; remembers every outcome so none can be lost silently."""

    def __init__(self, port: int, threads: int = 2, path: str = "/users/{i}"):
        self.port, self.path = port, path
        self.outcomes: Counter = Counter()
        self.replicas: Counter = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, n: int) -> None:
        i = n
        while not self._stop.is_set():
            i += 7
            try:
                status, headers, _ = request(self.port, "GET", self.path.format(i=1 + i % 10_000))
                self.outcomes[status] += 1
                self.replicas[headers.get("x-replica")] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by type
                self.outcomes[type(exc).__name__] += 1
            time.sleep(0.002)

    @property
    def failures(self) -> dict:
        return {k: v for k, v in self.outcomes.items() if k != 200}


@contextmanager
def running_stack(state_dir, base_port: int, **changes):
    stack = LocalStack(state_dir)
    stack.up(Topology(base_port=base_port).with_changes(**changes))
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def state_dir():
    path = reachable_tmp_dir("scalelab-test-")
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)
