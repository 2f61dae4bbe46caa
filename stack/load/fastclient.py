"""A lean HTTP/1.1 keep-alive client on asyncio transports, for load generation only.

Why not just aiohttp: on a 2-core machine the generator competes with the
server it measures. aiohttp's ClientSession costs ~60 us of CPU per request
here; this client a fraction of that: each request is pre-rendered bytes,
written with one send, and the response is parsed by httptools (llhttp, in C;
the body is skipped there, never copied into Python). Its framing covers
Content-Length, chunked and close-delimited bodies, HEAD/204/304 and 1xx, and
keep-alive or "Connection: close". Plain http:// only; https goes through
aiohttp (LoadSpec.client).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from httptools import HttpParserError, HttpResponseParser


class ConnectFailed(ConnectionError):
    """A TCP connection to the server could not be opened."""


class Disconnected(ConnectionError):
    """The server closed the connection before the response was complete."""


class BadResponse(ValueError):
    """The bytes from the server were not an HTTP/1.x response."""


READ_SIZE = 64 * 1024
SWEEP_S = 0.05


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case) in a response head, or None."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        head = head.lower()
        at = head.find(b"\r\n" + name + b":")
        if at < 0:
            return None
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip()


def _head(received: bytes) -> bytes:
    """The head of a response from its bytes, up to the CRLF that ends its last header."""
    return received[:received.find(b"\r\n\r\n") + 2]


_REPLICA = b"\r\nx-replica:"


def _replica(received: bytes) -> str | None:
    """X-Replica's value, from a response's bytes once its head is complete (the body may follow).

    A search instead of a parser callback per header, which cost more. The fast
    path finds the header as the app spells it, and knows it is in the head when
    no CRLF CRLF comes before it (llhttp insists on CRLF, so the head's end is
    the first LF CR).
    """
    at = received.find(_REPLICA)
    if at < 0 or received.find(b"\n\r", 0, at) >= 0:
        value = _header(_head(received), b"x-replica")      # spelt otherwise, or absent
        return None if value is None else value.decode("latin-1")
    at += len(_REPLICA)
    return received[at:received.find(b"\r", at)].strip().decode("latin-1")


def _framed(received: bytes) -> bool:
    """Whether the body ends by itself (Content-Length or chunked), not at the close."""
    head = _head(received)
    if _header(head, b"content-length") is not None:
        return True
    encoding = _header(head, b"transfer-encoding")
    return encoding is not None and b"chunked" in encoding.lower()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, response parsed as it arrives.

    The parser's callbacks (on_*) only note what a load test needs: status,
    keep-alive, completeness. X-Replica and the body's framing are read from the
    head's bytes instead of a callback per header; `head` holds the bytes
    received since the response began, until its head is parsed. Under uvloop a
    plain Protocol is the cheaper one: uvloop reads into one buffer of its own
    either way, and its BufferedProtocol path calls into Python twice per read.
    Together: 18.9 -> 18.2 us of CPU per request beside wrk (4 replicas).
    """

    __slots__ = ("loop", "forwarded", "transport", "closed", "waiter", "head_only", "deadline", "parser",
                 "status", "replica", "keep", "head", "complete", "surplus")

    def __init__(self, loop: asyncio.AbstractEventLoop, forwarded: bytes | None = None):
        self.loop = loop
        self.forwarded = forwarded     # an X-Forwarded-For line each request carries, or None
        self.transport = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self.head_only = False
        self.deadline = math.inf       # loop.time() by which the request in flight must be answered
        self.parser = HttpResponseParser(self)
        self._new_response()

    def _new_response(self) -> None:
        self.status = None          # set once the final (non-1xx) head is parsed
        self.replica = None
        self.keep = False
        self.head = b""             # this response's bytes, until its head is parsed
        self.complete = False
        self.surplus = False        # bytes beyond the response: this connection is not reused

    # -- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        if self.waiter is None or self.waiter.done():
            self.abort()              # bytes nobody asked for: this connection cannot be trusted
            return
        if self.status is None:
            self.head = data if not self.head else self.head + data
        try:
            self.parser.feed_data(data)
        except HttpParserError as exc:
            if not self.complete:
                self._fail(BadResponse(f"not a valid HTTP/1.x response: {exc}"))
                self.abort()
                return
            self.surplus = True       # garbage after a complete response
        if self.complete:
            self._finish()

    def connection_lost(self, exc):
        self.closed = True
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            if self.status is not None and not self.head_only and not _framed(self.head):
                self.complete = True              # a close-delimited body ends here
                self._finish()
            else:
                detail = f": {exc}" if exc else ""
                self._fail(Disconnected(f"the server closed the connection before a full response{detail}"))

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self):
        if self.complete:
            self.surplus = True

    def on_headers_complete(self):
        if self.complete:
            return                          # a message beyond the response only retires the connection
        status = self.parser.get_status_code()
        if 100 <= status < 200:             # informational: the real response follows
            self.head = self.head[self.head.find(b"\r\n\r\n") + 4:]
            return
        # Read here: llhttp clears what keep-alive depends on once the message completes.
        self.status, self.keep = status, self.parser.should_keep_alive()
        self.replica = _replica(self.head)
        if self.head_only:
            self.complete = True            # a HEAD's head is the whole response

    def on_message_complete(self):
        if self.status is not None:
            self.complete = True

    # -- used by the pool ---------------------------------------------------------------
    def send(self, raw: bytes, head_only: bool, deadline: float, sink=None):
        """Write one request, to be answered by `deadline` (loop time). The outcome goes to
        `sink` (anything with a Future's done/set_result/set_exception), or to a new
        Future, which is returned."""
        if self.transport is None:
            raise Disconnected("the server closed the connection before the request was sent")
        self.waiter = waiter = self.loop.create_future() if sink is None else sink
        self.head_only, self.deadline = head_only, deadline
        if self.forwarded is not None:
            at = raw.index(b"\r\n") + 2                 # after the request line
            raw = raw[:at] + self.forwarded + raw[at:]
        self.transport.write(raw)
        return waiter

    def expire(self, timeout_s: float) -> None:
        """The request's deadline passed: fail it and drop the connection."""
        if self.waiter is not None and not self.waiter.done():
            self._fail(TimeoutError(f"no complete response within {timeout_s:g} s"))
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _finish(self) -> None:
        if self.head_only:
            # llhttp cannot be told a response answers HEAD: it would wait for the
            # body the head announced. A fresh parser for the next response.
            self.parser = HttpResponseParser(self)
        outcome = (self.status, self.replica, self.keep and not self.surplus and not self.closed,
                   time.perf_counter())
        self._new_response()
        # Last: a sink may send the next request on this connection from inside this call.
        self.waiter.set_result(outcome)


class _BufferedConnection(_Connection, asyncio.BufferedProtocol):
    """The same connection for asyncio's own loops, whose plain Protocol allocates
    256 KiB per read (glibc serves it with mmap/munmap, tripling the kernel time
    per request): here reads go into one buffer allocated once."""

    __slots__ = ("read_buffer",)

    def __init__(self, loop: asyncio.AbstractEventLoop, forwarded: bytes | None = None):
        super().__init__(loop, forwarded)
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    def get_buffer(self, sizehint):
        return self.read_buffer

    def buffer_updated(self, nbytes):
        self.data_received(bytes(self.read_buffer[:nbytes]))


def forwarded_for(address: str) -> dict[str, str]:
    """The header that names a client's own address to a balancer behind a proxy: every client of
    the course that sends from a chosen address adds it (stack.render.nginx.PROXY_NETWORKS)."""
    return {"X-Forwarded-For": address}


def connection_class(loop: asyncio.AbstractEventLoop) -> type[_Connection]:
    """The cheaper connection for this kind of event loop."""
    return _Connection if type(loop).__module__.startswith("uvloop") else _BufferedConnection


def _time_out(waiter: asyncio.Future, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no free connection within {timeout_s:g} s"))


class FastClient:
    """A bounded pool of keep-alive connections to one host:port.

    send() returns (status, X-Replica or None, perf_counter at completion). It
    raises ConnectFailed, TimeoutError (timeout_s covers waiting for a free
    connection, connecting and the response), Disconnected or BadResponse.
    """

    def __init__(self, host: str, port: int, limit: int, timeout_s: float, local_addr: str | None = None):
        self.host, self.port, self.limit, self.timeout_s = host, port, limit, timeout_s
        self.local_addr = (local_addr, 0) if local_addr else None
        # From a chosen address, each request says so: behind a port proxy (Docker) nginx would
        # otherwise see the proxy's address for every client (stack.render.nginx.PROXY_NETWORKS).
        self._forwarded = "".join(f"{name}: {value}\r\n" for name, value in forwarded_for(local_addr).items()
                                  ).encode("latin-1") if local_addr else None
        self.loop = asyncio.get_running_loop()
        self._protocol = connection_class(self.loop)
        self.pool_waits = 0          # requests that found every connection busy
        self._connections: set[_Connection] = set()      # every one opened, until the sweep sees it closed
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle: list[_Connection] = []
        self._open = 0               # connections open or being opened (<= limit)
        self._waiters: deque[asyncio.Future] = deque()

    async def send(self, request) -> tuple[int, str | None, float]:
        deadline = self.loop.time() + self.timeout_s
        conn = self._take_idle()
        if conn is None:
            conn = await self._acquire(deadline)
        try:
            status, replica, keep, done_at = await conn.send(request.raw, request.method == "HEAD", deadline)
        except BaseException:
            self._lost(conn)
            raise
        self._returned(conn, keep)
        return status, replica, done_at

    def send_now(self, request, sink) -> bool:
        """Send on an idle connection at once, without a task or a Future: the outcome
        goes to `sink` as (status, X-Replica, keep, perf_counter at completion) or an
        exception. False, and nothing sent, when no connection is idle (then use send())."""
        conn = self._take_idle()
        if conn is None:
            return False
        conn.send(request.raw, request.method == "HEAD", self.loop.time() + self.timeout_s,
                  _Pooled(self, conn, sink))
        return True

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()               # most recently used: warmest connection
            if not conn.closed:
                return conn
            self._release_slot()
        return None

    def _returned(self, conn: _Connection, keep: bool) -> None:
        if keep:
            self._give_back(conn)
        else:
            conn.abort()
            self._release_slot()

    def _lost(self, conn: _Connection) -> None:
        conn.abort()                              # a half-read response makes it useless
        self._release_slot()

    async def warm(self, count: int, within_s: float = 2.0) -> int:
        """Open up to `count` idle connections now, before the clock starts; how many opened.

        Without this an open loop at thousands of req/s starts by opening a connection
        for nearly every request at once, and the connect storm puts it behind schedule.
        """
        count = max(0, min(count, self.limit - self._open))
        self._open += count
        deadline = self.loop.time() + min(within_s, self.timeout_s)
        outcomes = await asyncio.gather(*(self._connect(deadline) for _ in range(count)),
                                        return_exceptions=True)
        opened = [c for c in outcomes if isinstance(c, _Connection)]   # failures gave their slot back
        for conn in opened:
            self._give_back(conn)
        return len(opened)

    async def _acquire(self, deadline: float) -> _Connection:
        if self._open < self.limit:
            self._open += 1
            return await self._connect(deadline)
        self.pool_waits += 1
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_at(deadline, _time_out, waiter, self.timeout_s)
        try:
            conn = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()             # handed over just as we gave up
                if handed is None:
                    self._release_slot()
                else:
                    self._give_back(handed)
            raise
        finally:
            timer.cancel()
        if conn is None:                     # a slot came free: open a connection in it
            return await self._connect(deadline)
        return conn

    async def _connect(self, deadline: float) -> _Connection:
        """Open a connection in a slot already counted in _open (given back on failure)."""
        try:
            return await self.open_connection(deadline)
        except BaseException:
            self._release_slot()
            raise

    async def open_connection(self, deadline: float) -> _Connection:
        """A new connection outside the pool (the closed loop keeps its own)."""
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: self._protocol(self.loop, self._forwarded), self.host, self.port,
                                            local_addr=self.local_addr),
                max(0.0, deadline - self.loop.time()))
        except asyncio.TimeoutError:          # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"could not connect within {self.timeout_s:g} s") from None
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._connections.add(conn)
        if self._sweeper is None:
            self._sweep()
        return conn

    def expire_all(self) -> None:
        """Time out every request still in flight now (the run's hard deadline)."""
        for conn in list(self._connections):
            if conn.waiter is not None and not conn.waiter.done():
                conn.expire(self.timeout_s)

    def _sweep(self) -> None:
        """Expire requests past their deadline: one periodic check instead of a timer
        per request (which cost ~5 us each); deadlines are kept to within SWEEP_S."""
        now = self.loop.time()
        for conn in list(self._connections):
            if conn.closed:
                self._connections.discard(conn)
            elif conn.deadline <= now and conn.waiter is not None and not conn.waiter.done():
                conn.expire(self.timeout_s)
        self._sweeper = self.loop.call_later(min(SWEEP_S, self.timeout_s / 4), self._sweep)

    def _give_back(self, conn: _Connection) -> None:
        if conn.closed:                      # closed by the server since its last response
            self._release_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _release_slot(self) -> None:
        self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()


class _Pooled:
    """What a connection reports to for send_now(): the pool's bookkeeping, then the caller's sink."""

    __slots__ = ("client", "conn", "sink", "finished")

    def __init__(self, client: FastClient, conn: _Connection, sink):
        self.client, self.conn, self.sink, self.finished = client, conn, sink, False

    def done(self) -> bool:
        return self.finished

    def set_result(self, outcome) -> None:
        self.finished = True
        self.client._returned(self.conn, outcome[2])
        self.sink.set_result(outcome)

    def set_exception(self, exc: BaseException) -> None:
        self.finished = True
        self.client._lost(self.conn)
        self.sink.set_exception(exc)
