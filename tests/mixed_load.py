"""A small mixed load for fault tests: reads, writes and /work, every outcome kept with its time.

Threads and one fresh connection per request: a fault shows up as a failed
request of a class, never as a stalled connection pool in the generator.
"""
from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from conftest import BackgroundThreads, request

OK = {200, 201}


@dataclass(frozen=True)
class Outcome:
    kind: str          # read | write | work
    started: float     # time.monotonic()
    ended: float
    result: object     # HTTP status, or the exception's type name
    read_source: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in OK


class MixedLoad(BackgroundThreads):
    """`readers` threads GET /users/{id}, `writers` POST /users (unique emails), `workers` GET /work."""

    def __init__(self, port: int, tag: str, readers: int = 3, writers: int = 1, workers: int = 1,
                 pause_s: float = 0.01, timeout: float = 5.0):
        self.port, self.tag, self.pause_s, self.timeout = port, tag, pause_s, timeout
        self.outcomes: list[Outcome] = []
        self.acknowledged: list[str] = []      # emails of writes answered 201
        self._serial = itertools.count()
        self._stop = threading.Event()
        kinds = ["read"] * readers + ["write"] * writers + ["work"] * workers
        self._threads = [threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in kinds]

    def _one(self, kind: str):
        if kind == "read":
            return request(self.port, "GET", f"/users/{random.randint(1, 10_000)}", timeout=self.timeout)
        if kind == "work":
            return request(self.port, "GET", "/work?ms=5", timeout=self.timeout)
        email = f"{self.tag}-{next(self._serial)}@faults.example"
        answer = request(self.port, "POST", "/users", {"name": "fault", "email": email}, timeout=self.timeout)
        if answer[0] == 201:
            self.acknowledged.append(email)
        return answer

    def _run(self, kind: str) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            source = None
            try:
                status, headers, _ = self._one(kind)
                result, source = status, headers.get("x-read-source")
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by type
                result = type(exc).__name__
            self.outcomes.append(Outcome(kind, started, time.monotonic(), result, source))
            time.sleep(self.pause_s)

    @property
    def join_timeout_s(self) -> float:
        return self.timeout + 2

    # -- figures ----------------------------------------------------------------
    def of(self, kind: str, since: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind and o.started >= since]

    def failures(self, kind: str) -> Counter:
        return Counter(str(o.result) for o in self.of(kind) if not o.ok)

    def failed_ratio(self, kind: str) -> float:
        done = self.of(kind)
        return sum(not o.ok for o in done) / max(1, len(done))

    def last_failure_after(self, moment: float) -> float:
        """Seconds from `moment` until the last failed request ended (0 if none ended later)."""
        ends = [o.ended for o in self.outcomes if not o.ok and o.ended > moment]
        return max(ends) - moment if ends else 0.0

    def summary(self) -> dict:
        return {kind: {"sent": len(self.of(kind)), "failed": dict(self.failures(kind))}
                for kind in ("read", "write", "work")}
