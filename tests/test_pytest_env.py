"""The suite's own scheduling rules (stack/pytest_env.py): which files run alone, and the lock."""
from __future__ import annotations

import multiprocessing
import time
from types import SimpleNamespace

from stack import pytest_env


def test_every_lesson_and_the_window_comparing_tests_run_alone_and_go_first(monkeypatch):
    assert pytest_env._runs_alone("lessons/02_horizontal_vs_vertical.ipynb")
    assert pytest_env._runs_alone("tests/test_cpu_quota.py")
    assert not pytest_env._runs_alone("tests/test_labs.py")
    assert not pytest_env._runs_alone("solutions/02_capacity_plan.ipynb")
    items = [SimpleNamespace(nodeid=n) for n in ("tests/test_labs.py::a", "lessons/01_x.ipynb::Cell 0",
                                                 "tests/test_labs.py::b", "lessons/01_x.ipynb::Cell 1")]
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytest_env.pytest_collection_modifyitems(None, items)          # in series: the order is kept
    assert [i.nodeid for i in items][:2] == ["tests/test_labs.py::a", "lessons/01_x.ipynb::Cell 0"]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    pytest_env.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["lessons/01_x.ipynb::Cell 0", "lessons/01_x.ipynb::Cell 1",
                                         "tests/test_labs.py::a", "tests/test_labs.py::b"]


def _hold(path, alone, hold_s, events, name):
    lock = pytest_env.FileLock(path)
    lock.acquire(alone)
    events.put((time.monotonic(), name, "in"))
    time.sleep(hold_s)
    events.put((time.monotonic(), name, "out"))
    lock.release()


def test_a_file_that_runs_alone_waits_for_the_others_and_then_goes_before_newcomers(tmp_path):
    """shared-1 holds; alone arrives and waits; shared-2 arrives later and must wait for alone."""
    path, events = str(tmp_path / "files.lock"), multiprocessing.Queue()
    procs = []
    # Arrivals 0.4 s apart, shared-1 held 1.2 s: each arrives while the one before it holds or waits,
    # with room for a slow process start on a busy machine.
    for name, alone, hold_s in (("shared-1", False, 1.2), ("alone", True, 0.3), ("shared-2", False, 0.1)):
        procs.append(multiprocessing.Process(target=_hold, args=(path, alone, hold_s, events, name)))
        procs[-1].start()
        time.sleep(0.4)
    for p in procs:
        p.join(10)
    order = [(name, what) for _, name, what in sorted(events.get(timeout=5) for _ in range(6))]
    assert order == [("shared-1", "in"), ("shared-1", "out"), ("alone", "in"), ("alone", "out"),
                     ("shared-2", "in"), ("shared-2", "out")], order


def test_two_shared_holders_overlap(tmp_path):
    path, events = str(tmp_path / "files.lock"), multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_hold, args=(path, False, 1.0, events, n)) for n in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    order = [what for _, _, what in sorted(events.get(timeout=5) for _ in range(4))]
    assert order == ["in", "in", "out", "out"], order
