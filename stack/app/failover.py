"""Breakers on the database servers: reads leave a dead or lagging replica within a second,
and writes to a dead primary fail at once with a 503 that names it.

A request never waits out a long timeout to learn that a server is down:
- each server has a watch that probes it every PROBE_INTERVAL_S on its own
  connection and opens the breaker when a probe fails, hangs past
  PROBE_TIMEOUT_S, or (the replica) shows a replay lag past the bound;
- a request that fails or hangs on the replica opens the breaker itself;
- the breaker closes after CLOSE_AFTER good probes in a row (and a check
  that drops the pool's broken connections), so reads return to the replica.

A query on a frozen server cannot be cancelled (psycopg waits for the server
to acknowledge the cancel), so a request that gives up on one leaves its task
to finish in the background instead of cancelling it.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

import psycopg
from psycopg.conninfo import conninfo_to_dict

PROBE_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 0.5
CLOSE_AFTER = 2

# Replay position (bytes of WAL) received and applied; equal when the replica has caught up.
REPLICA_PROBE = ("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::float8,"
                 " pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::float8")
PRIMARY_PROBE = "SELECT 1"


def address(dsn: str) -> str:
    parts = conninfo_to_dict(dsn)
    return f"{parts.get('host', '?')}:{parts.get('port', '?')}"


async def within(coroutine, seconds: float):
    """(finished, result or exception): the coroutine keeps running if it did not finish."""
    task = asyncio.ensure_future(coroutine)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.add_done_callback(_forget)
        return False, None
    if task.exception() is not None:
        return True, task.exception()
    return True, task.result()


def _forget(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()   # retrieved, so asyncio does not log it


class Breaker:
    """Closed: the server takes requests. Open: it is skipped until probes say it is back."""

    def __init__(self, server: str):
        self.server = server
        self.open = False
        self.reason = ""
        self.trips = 0
        self.opened_at: float | None = None
        self.good_probes = 0

    def trip(self, reason: str) -> None:
        self.good_probes = 0
        self.reason = reason
        if not self.open:
            self.open, self.opened_at = True, time.time()
            self.trips += 1

    def to_dict(self) -> dict:
        return {"open": self.open, "reason": self.reason if self.open else "", "trips": self.trips,
                "opened_at": self.opened_at if self.open else None}


class ReplayLag:
    """Seconds the replica has held WAL it received but not yet applied (0 when caught up).

    Measured from the replica alone: when each received position was first
    seen, and whether replay has passed it since.
    """

    def __init__(self):
        self._pending: deque = deque()    # (first seen, received position) not yet replayed

    def update(self, received: float | None, replayed: float | None, now: float) -> float:
        if received is None or replayed is None:
            self._pending.clear()        # not streaming: nothing waits to be applied
            return 0.0
        while self._pending and self._pending[0][1] <= replayed:
            self._pending.popleft()
        if received > replayed and (not self._pending or self._pending[-1][1] < received):
            self._pending.append((now, received))
        return now - self._pending[0][0] if self._pending else 0.0


class ServerWatch:
    """Probes one server and drives its breaker."""

    def __init__(self, server: str, dsn_of, breaker: Breaker, lag_bound_of=None, on_recover=None):
        self.server, self.dsn_of, self.breaker = server, dsn_of, breaker
        self.lag_bound_of = lag_bound_of         # None: no lag check (the primary)
        self.on_recover = on_recover
        self.lag = ReplayLag()
        self.lag_s = 0.0
        self._conn: psycopg.AsyncConnection | None = None
        self._probe_task: asyncio.Future | None = None

    async def _probe(self):
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.dsn_of(), autocommit=True,
                                                               connect_timeout=2)
        try:
            query = REPLICA_PROBE if self.lag_bound_of else PRIMARY_PROBE
            return await (await self._conn.execute(query)).fetchone()
        except BaseException:
            conn, self._conn = self._conn, None
            await conn.close()
            raise

    async def probe_once(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.ensure_future(self._probe())
            self._probe_task.add_done_callback(_forget)
        done, _ = await asyncio.wait({self._probe_task}, timeout=PROBE_TIMEOUT_S)
        if not done:
            self.breaker.trip(f"no answer to a probe within {PROBE_TIMEOUT_S:g} s")
            return
        if self._probe_task.exception() is not None:
            self.breaker.trip(f"probe failed: {_first_line(self._probe_task.exception())}")
            return
        if self.lag_bound_of:
            received, replayed = self._probe_task.result()
            self.lag_s = self.lag.update(received, replayed, time.monotonic())
            bound = self.lag_bound_of()
            if self.lag_s > bound:
                self.breaker.trip(f"replay lag {self.lag_s:.1f} s is past the bound of {bound:g} s")
                return
        await self._good_probe()

    async def _good_probe(self) -> None:
        breaker = self.breaker
        if not breaker.open:
            return
        breaker.good_probes += 1
        if breaker.good_probes >= CLOSE_AFTER:
            if self.on_recover is not None:
                await within(self.on_recover(), PROBE_TIMEOUT_S)   # drop connections the outage broke
            breaker.open = False

    async def run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any one probe
                self.breaker.trip(f"probe failed: {_first_line(exc)}")
            await asyncio.sleep(PROBE_INTERVAL_S)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
