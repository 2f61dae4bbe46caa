"""The suite's own scheduling rules: the order of files on xdist workers (stack/pytest_env.py) and
measurement windows that have the machine to themselves (stack/quiet.py), with real processes."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from stack import pytest_env, quiet


def test_on_xdist_workers_the_longest_files_go_first_each_in_its_own_order(monkeypatch):
    items = [SimpleNamespace(nodeid=n) for n in ("tests/test_topology.py::a", "lessons/06_sharding.ipynb::Cell 0",
                                                 "tests/test_labs.py::a", "lessons/06_sharding.ipynb::Cell 1",
                                                 "tests/test_labs.py::b")]
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytest_env.pytest_collection_modifyitems(None, items)          # in series: the order is kept
    assert items[0].nodeid == "tests/test_topology.py::a"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    pytest_env.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == ["tests/test_labs.py::a", "tests/test_labs.py::b",
                                         "lessons/06_sharding.ipynb::Cell 0", "lessons/06_sharding.ipynb::Cell 1",
                                         "tests/test_topology.py::a"]
    assert pytest_env._whole_window("tests/test_cpu_quota.py")
    assert not pytest_env._whole_window("lessons/02_horizontal_vs_vertical.ipynb")   # its windows lock themselves


def test_without_a_shared_directory_a_window_is_free(monkeypatch):
    monkeypatch.delenv(quiet.DIR_ENV, raising=False)
    assert quiet.board() is None
    with quiet.window():
        pass


# -- workers as real processes: each step is (what, seconds), logged with monotonic times ------------

def _worker(directory, worker, steps, events, start_at):
    os.environ[quiet.DIR_ENV], os.environ[quiet.WORKER_ENV] = str(directory), worker
    board = quiet.board()
    time.sleep(max(0.0, start_at - time.monotonic()))
    for what, seconds in steps:
        if what == "sleep":
            time.sleep(seconds)
            continue
        if what == "item":
            board.item_started()
        ctx = quiet.window() if what == "window" else _nothing()
        with ctx:
            events.put((time.monotonic(), worker, what, "in"))
            time.sleep(seconds)
            events.put((time.monotonic(), worker, what, "out"))
        if what == "item":
            board.item_ended()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run(tmp_path, plans: dict) -> list:
    """Start one process per worker at the same moment; return (t, worker, what, in|out) sorted."""
    events = multiprocessing.Queue()
    start_at = time.monotonic() + 0.5
    procs = [multiprocessing.Process(target=_worker, args=(tmp_path, w, steps, events, start_at))
             for w, steps in plans.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
        assert p.exitcode == 0, (p, p.exitcode)
    count = sum(1 for steps in plans.values() for what, _ in steps if what != "sleep") * 2
    return sorted(events.get(timeout=5) for _ in range(count))


def _spans(events, worker, what):
    ins = [t for t, w, x, e in events if w == worker and x == what and e == "in"]
    outs = [t for t, w, x, e in events if w == worker and x == what and e == "out"]
    return list(zip(ins, outs))


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_items_of_two_workers_share_the_machine(tmp_path):
    events = _run(tmp_path, {"a": [("item", 0.8)], "b": [("item", 0.8)]})
    assert _overlap(_spans(events, "a", "item")[0], _spans(events, "b", "item")[0]), events


def test_a_window_waits_for_the_other_workers_item_and_holds_its_next_one(tmp_path):
    # a: an item of 1.2 s, then (0.1 s later) another; b: a window asked for 0.3 s after a's item began.
    events = _run(tmp_path, {"a": [("item", 1.2), ("sleep", 0.1), ("item", 0.2)],
                             "b": [("sleep", 0.3), ("window", 0.6)]})
    first, second = _spans(events, "a", "item")
    (win,) = _spans(events, "b", "window")
    assert first[1] <= win[0] <= win[1] <= second[0], events


def test_two_items_that_each_open_a_window_take_turns_without_deadlock(tmp_path):
    # Each worker holds an item whose window is asked for inside it (a lesson cell): the item of the
    # worker waiting for a window counts as idle, so one goes, then the other.
    events = multiprocessing.Queue()
    start_at = time.monotonic() + 0.5
    procs = [multiprocessing.Process(target=_item_with_window, args=(tmp_path, w, events, start_at)) for w in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
        assert p.exitcode == 0, p.exitcode
    got = sorted(events.get(timeout=5) for _ in range(4))
    a, b = _spans(got, "a", "window")[0], _spans(got, "b", "window")[0]
    assert not _overlap(a, b), got


def _item_with_window(directory, worker, events, start_at):
    os.environ[quiet.DIR_ENV], os.environ[quiet.WORKER_ENV] = str(directory), worker
    board = quiet.board()
    time.sleep(max(0.0, start_at - time.monotonic()))
    board.item_started()
    time.sleep(0.2)                      # both items run before either asks for its window
    with quiet.window():
        events.put((time.monotonic(), worker, "window", "in"))
        time.sleep(0.5)
        events.put((time.monotonic(), worker, "window", "out"))
    board.item_ended()


def test_a_killed_worker_blocks_nobody(tmp_path):
    ready = multiprocessing.Event()
    dead = multiprocessing.Process(target=_item_forever, args=(tmp_path, ready))
    dead.start()
    assert ready.wait(10)
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(5)
    board = quiet.Board(tmp_path, "alive")
    ticket = board.window_requested()
    assert board.window_granted(ticket)
    board.window_ended()


def _item_forever(directory, ready):
    quiet.Board(directory, "killed").item_started()
    ready.set()
    time.sleep(60)


def test_threads_share_one_window_and_a_child_of_a_worker_in_a_window_joins_it(tmp_path, monkeypatch):
    monkeypatch.setenv(quiet.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(quiet.WORKER_ENV, "a")
    other = quiet.Board(tmp_path, "b")
    with quiet.window():
        # Another worker now asks for a window: it gets a ticket before our next one...
        ticket_b = other.window_requested(pid=os.getpid())
        inner = []
        t = threading.Thread(target=lambda: inner.append(_enter_and_leave()))
        t.start()
        t.join(5)
        assert inner == [True]            # ...yet a thread of ours joins our window at once,
        me = quiet.Board(tmp_path, "a")   # and so does another process of the same worker
        ticket_child = me.window_requested(pid=os.getppid())
        assert me.window_granted(ticket_child, pid=os.getppid())
        me.window_ended(pid=os.getppid())
        assert not other.window_granted(ticket_b, pid=os.getpid())     # b waits for our window
    assert other.window_granted(ticket_b, pid=os.getpid())


def _enter_and_leave() -> bool:
    with quiet.window():
        return True


def test_a_wait_too_long_says_who_holds_the_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(quiet, "WAIT_LIMIT_S", 0.2)
    holder = quiet.Board(tmp_path, "holder")
    ticket = holder.window_requested()
    assert holder.window_granted(ticket)
    with pytest.raises(TimeoutError, match="holder"):
        quiet.Board(tmp_path, "late").item_started()


def test_a_load_cancelled_while_waiting_gives_its_window_back_once_granted(tmp_path, monkeypatch):
    """A dashboard stopped before its load began: the waiting thread cannot be cancelled, so the
    window it is granted later must be returned at once, or every other worker would wait forever."""
    import asyncio
    monkeypatch.setenv(quiet.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(quiet.WORKER_ENV, "a")
    other = quiet.Board(tmp_path, "b")
    assert other.window_granted(other.window_requested(pid=os.getppid()), pid=os.getppid())

    async def load_that_waits():
        async with quiet.async_window():
            await asyncio.sleep(60)

    async def cancel_it():
        task = asyncio.ensure_future(load_that_waits())
        await asyncio.sleep(0.3)              # waiting for b's window
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # b finishes while asyncio.run waits for the still-waiting thread: it is granted, and must give it back
    threading.Timer(0.8, other.window_ended, kwargs={"pid": os.getppid()}).start()
    asyncio.run(cancel_it())
    deadline = time.monotonic() + 5
    mine = quiet.Board(tmp_path, "a")
    while time.monotonic() < deadline:
        with mine._state() as state:
            entry = mine._mine(state)
            if not entry["windows"] and not entry["waiting"]:
                break
        time.sleep(0.05)
    assert not entry["windows"] and not entry["waiting"], entry
    assert not quiet.holding()


def test_a_window_that_spans_cells_lets_its_own_worker_go_on(tmp_path, monkeypatch):
    """A dashboard's load holds a window across a notebook's cells while another worker waits for
    one: the notebook's next cell (item) must start, or nothing would ever end the window."""
    monkeypatch.setattr(quiet, "WAIT_LIMIT_S", 2.0)
    a, b = quiet.Board(tmp_path, "a"), quiet.Board(tmp_path, "b")
    b.item_started()
    load = a.window_requested(pid=os.getppid())       # the kernel's dashboard load
    ticket = b.window_requested()                     # b's item now waits for a window: b counts as idle
    assert a.window_granted(load, pid=os.getppid())
    a.item_started()                           # the next cell: raised TimeoutError before the fix
    assert not b.window_granted(ticket)
    a.window_ended(pid=os.getppid())
    a.item_ended()
    assert b.window_granted(ticket)


def _child_window(directory, out):
    with quiet.window():
        board = quiet.Board(directory, os.environ[quiet.WORKER_ENV])
        with board._state() as state:
            out.put(os.getpid() in board._mine(state)["windows"])


def test_a_process_forked_inside_a_window_records_its_own(tmp_path, monkeypatch):
    """A forked child inherits the parent's count of windows held: it must not count itself in
    (unrecorded, it would go on measuring after the parent's window closed)."""
    monkeypatch.setenv(quiet.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(quiet.WORKER_ENV, "a")
    out = multiprocessing.get_context("fork").Queue()
    with quiet.window():
        child = multiprocessing.get_context("fork").Process(target=_child_window, args=(tmp_path, out))
        child.start()
        child.join(10)
    assert child.exitcode == 0 and out.get(timeout=5) is True


def test_a_cancelled_wait_stops_waiting_at_once(tmp_path, monkeypatch):
    """Its ticket would otherwise stay the oldest, and hold every other worker's items back."""
    import asyncio
    monkeypatch.setenv(quiet.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(quiet.WORKER_ENV, "a")
    other = quiet.Board(tmp_path, "b")
    assert other.window_granted(other.window_requested(pid=os.getppid()), pid=os.getppid())   # held for good

    async def cancel_a_waiting_load():
        async def load():
            async with quiet.async_window():
                pass
        task = asyncio.ensure_future(load())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    started = time.monotonic()
    asyncio.run(cancel_a_waiting_load())        # waits for the waiting thread to end
    assert time.monotonic() - started < 3
    mine = quiet.Board(tmp_path, "a")
    with mine._state() as state:
        assert mine._mine(state)["waiting"] == [] and mine._mine(state)["windows"] == []


def test_an_item_that_ends_drops_what_an_interrupt_left_unless_it_holds_a_window_on_purpose(tmp_path):
    """A wait or window the pytest process left (pytest-timeout's alarm, Ctrl-C) must not hold the
    other workers forever; a dashboard's window across cells (`holding`) stays."""
    a = quiet.Board(tmp_path, "a")
    for holding in (False, True):
        a.item_started()
        assert a.window_granted(a.window_requested())    # a window held...
        a.window_requested()                             # ...and a wait left behind
        a.item_ended(holding=holding)
        with a._state() as state:
            mine = a._mine(state)
            assert (len(mine["windows"]), len(mine["waiting"])) == ((1, 1) if holding else (0, 0)), mine
            mine["windows"], mine["waiting"] = [], []
