"""The closed loop on the fast client, driven by callbacks like wrk.

Each user owns one connection; when a response completes, the connection's
parser hands it straight to the user, which records it and writes the next
request in the same callback: no task, future or coroutine per request. That
costs about a quarter less CPU than awaiting each request, and on a 2-core
machine every microsecond the generator spends is taken from the server.
"""
from __future__ import annotations

import asyncio
import math
import time

from .clients import classify
from .fastclient import FastClient
from .mix import MixPlan
from .recorder import Recorder


STOP_POLL_S = 0.01            # how soon a stop() asked of the run reaches the users


class ClosedUser:
    """One closed-loop client. Quacks like a Future for the connection it sends on:
    the connection calls set_result(...) or set_exception(...) when the request ends."""

    __slots__ = ("client", "rec", "plan", "stop_at", "finished", "conn", "label", "began", "connecting")

    def __init__(self, client: FastClient, rec: Recorder, plan: MixPlan, stop_at: float,
                 finished: asyncio.Future):
        self.client, self.rec, self.plan = client, rec, plan
        self.stop_at, self.finished = stop_at, finished      # stop_at drops to -inf to stop early
        self.conn = None
        self.label = None          # the request in flight, if any
        self.began = 0.0
        self.connecting: asyncio.Task | None = None

    # -- the Future-like face the connection sees ----------------------------------------------
    def done(self) -> bool:
        return self.label is None

    def set_result(self, outcome) -> None:
        status, replica, keep, done_at = outcome
        label, self.label = self.label, None
        self.rec.response(label, status, replica, done_at - self.began)
        if not keep:
            self._drop()
        self.next()

    def set_exception(self, exc: BaseException) -> None:
        label, self.label = self.label, None
        self.rec.failure(label, classify(exc), exc)
        self._drop()
        # Not straight away: this may run inside the connection's own callbacks.
        self.client.loop.call_soon(self.next)

    # -- driving --------------------------------------------------------------------------------
    def next(self) -> None:
        now = time.perf_counter()
        if now >= self.stop_at:
            self._drop()
            if not self.finished.done():
                self.finished.set_result(None)
            return
        conn = self.conn
        if conn is None or conn.closed:
            self._drop()
            self.connecting = self.client.loop.create_task(self._connect_then_send())
            return
        request = self.plan.next()
        self.label = request.label
        self.began = now
        self.rec.sent_one(None)
        try:
            conn.send(request.raw, request.method == "HEAD", self._deadline(), self)
        except Exception as exc:  # noqa: BLE001 - e.g. the server closed it just now
            self.set_exception(exc)

    async def _connect_then_send(self) -> None:
        # The connect is part of the request's time, as it is in wrk and aiohttp.
        now = time.perf_counter()
        request = self.plan.next()
        self.rec.sent_one(None)
        try:
            self.conn = await self.client.open_connection(self._deadline())
        except asyncio.CancelledError:
            self.rec.failure(request.label, "timeout", "still connecting when the run's time was up")
            raise
        except Exception as exc:  # noqa: BLE001 - every request ends in exactly one class
            self.rec.failure(request.label, classify(exc), exc)
            self.client.loop.call_soon(self.next)
            return
        finally:
            self.connecting = None
        self.label = request.label
        self.began = now
        try:
            self.conn.send(request.raw, request.method == "HEAD", self._deadline(), self)
        except Exception as exc:  # noqa: BLE001
            self.set_exception(exc)

    def _deadline(self) -> float:
        return self.client.loop.time() + self.client.timeout_s

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None

    def abandon(self) -> None:
        """The hard deadline passed: whatever is in flight is a timeout."""
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.label is not None and self.conn is not None:
            self.conn.expire(self.client.timeout_s)
        if not self.finished.done():
            self.finished.set_result(None)


async def run_closed_users(clients: list[FastClient], rec: Recorder, plan: MixPlan, connections: int,
                           stop_at: float, timeout_s: float, should_stop) -> None:
    """`connections` users until stop_at; then in-flight requests get until stop_at + timeout_s."""
    loop = asyncio.get_running_loop()
    users = [ClosedUser(clients[i % len(clients)], rec, plan, stop_at, loop.create_future())
             for i in range(connections)]

    def stop_now() -> None:
        for user in users:
            user.stop_at = -math.inf

    def poll_stop() -> None:
        # Polled, not asked per request: one call per request was measurable CPU.
        nonlocal poller
        if should_stop():
            stop_now()
        else:
            poller = loop.call_later(STOP_POLL_S, poll_stop)

    poller = loop.call_later(STOP_POLL_S, poll_stop)
    for user in users:
        user.next()
    finished = [u.finished for u in users]
    pending: list = []
    try:
        _, pending = await asyncio.wait(finished, timeout=max(0.0, stop_at + timeout_s - time.perf_counter()))
    except asyncio.CancelledError:
        # The caller gave up on the run: no user may send again from a response callback.
        stop_now()
        pending = [f for f in finished if not f.done()]
        raise
    finally:
        poller.cancel()
        if pending:
            for user in users:
                user.abandon()
            connecting = [u.connecting for u in users if u.connecting is not None]
            await asyncio.gather(*connecting, return_exceptions=True)
        for user in users:
            user._drop()
