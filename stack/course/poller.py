"""A reading taken every few milliseconds in a background thread while an experiment runs.

    with Poller(0.1, lambda: readings.append(count())):
        run_the_load()

Subclasses override `poll(shared)` and, when every reading needs the same connection, `opened()`.
"""
from __future__ import annotations

import contextlib
import threading


class Poller:
    join_timeout_s: float | None = None      # a poll that hangs (an HTTP timeout) may be abandoned

    def __init__(self, every_s: float, poll=None):
        self.every_s = every_s
        if poll is not None:
            self.poll = lambda shared: poll()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def opened(self):
        """What every poll shares, opened once in the thread (e.g. a connection): nothing by default."""
        return contextlib.nullcontext()

    def poll(self, shared) -> None:
        raise NotImplementedError

    def _loop(self):
        try:
            with self.opened() as shared:
                while True:
                    self.poll(shared)          # at least one reading, however short the block
                    if self._stop.wait(self.every_s):
                        break
        except Exception as exc:  # noqa: BLE001 - kept for __exit__: a silent poller would read as 0
            self._error = exc

    def __enter__(self):
        self._error = None
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        self._thread.join(self.join_timeout_s)
        if self._error is not None and exc_type is None:
            raise RuntimeError(f"{type(self).__name__} stopped reading: {self._error}") from self._error
