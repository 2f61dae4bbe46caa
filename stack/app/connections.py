"""Counting the TCP connections a replica is sent requests on.

uvicorn runs each replica with `CountingHttpToolsProtocol` (`--http
stack.app.connections:CountingHttpToolsProtocol`): every accepted connection gets
a number, and every request's ASGI scope carries it as `scalelab.connection`.
The app counts the distinct numbers its traffic came on. (The peer's address:port
cannot tell connections apart: on loopback Linux hands the same local port to the
next connection as soon as the last one closed.) With upstream keepalive nginx
sends thousands of requests on a few connections; without it, one per request.

A connection is forgotten after `idle_s` without a request, so memory stays
bounded; numbers are never reused, so nothing is counted twice.
"""
from __future__ import annotations

import itertools
import time
from collections import OrderedDict

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SCOPE_KEY = "scalelab.connection"
_numbers = itertools.count(1)


class CountingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, numbering each connection into every request's scope."""

    def connection_made(self, transport) -> None:
        self.scalelab_connection = next(_numbers)
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[SCOPE_KEY] = self.scalelab_connection


class ConnectionCounter:
    def __init__(self, idle_s: float = 75.0, clock=time.monotonic):
        self.idle_s, self._clock = idle_s, clock
        self._last_seen: OrderedDict = OrderedDict()   # connection -> last request time, oldest first
        self.opened = 0

    def saw(self, connection) -> None:
        """A request arrived on `connection` (its number; None when unknown: not counted)."""
        if connection is None:
            return
        now = self._clock()
        if connection in self._last_seen:
            self._last_seen.move_to_end(connection)
        else:
            self.opened += 1
        self._last_seen[connection] = now
        while self._last_seen:
            oldest, seen = next(iter(self._last_seen.items()))
            if now - seen <= self.idle_s:
                break
            del self._last_seen[oldest]

    @property
    def recent(self) -> int:
        """Connections that carried a request within the last `idle_s` seconds."""
        return len(self._last_seen)
