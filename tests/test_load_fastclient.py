"""The lean HTTP client against a server that writes exact bytes: every body framing it claims."""
from __future__ import annotations

import asyncio
import math

import pytest
import uvloop

from stack.load.fastclient import BadResponse, ConnectFailed, Disconnected, FastClient
from stack.load.mix import Prepared, render_request
from yarl import URL


def _get(path="/x", method="GET") -> Prepared:
    url = URL(f"http://127.0.0.1:1{path}")
    return Prepared(f"{method} {path}", method, url, None, None, render_request(method, url, None))


async def _canned(responses, chunks=1, close_after=False, hang=False):
    """A server that answers each request on a connection with the next canned response
    (or, with hang=True, reads requests and never answers)."""
    state = {"connections": 0, "requests": 0}
    queue = list(responses)

    async def handle(reader, writer):
        state["connections"] += 1
        if hang:
            await reader.read()                 # until the client gives up and closes
            writer.close()
            return
        try:
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                state["requests"] += 1
                assert head.startswith((b"GET ", b"HEAD "))
                data = queue.pop(0)
                step = max(1, len(data) // chunks)
                for i in range(0, len(data), step):        # dribble it out in pieces
                    writer.write(data[i:i + step])
                    await writer.drain()
                    await asyncio.sleep(0.002)
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], state


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_content_length_chunked_and_no_body_responses_on_one_kept_alive_connection():
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Replica: app-1\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nx-replica: app-2\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Replica: app-3\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
    ]

    async def go():
        server, port, state = await _canned(responses, chunks=3)
        client = FastClient("127.0.0.1", port, limit=1, timeout_s=2)
        got = [(await client.send(_get()))[:2] for _ in responses]
        await client.close()
        server.close()
        return got, state

    got, state = _run(go())
    assert got == [(200, "app-1"), (201, "app-2"), (204, "app-3"), (404, None)]
    assert state == {"connections": 1, "requests": 4}          # all on one keep-alive connection


def test_close_delimited_and_connection_close_responses_open_new_connections():
    responses = [
        b"HTTP/1.0 200 OK\r\nX-Replica: old\r\n\r\nbody until close",
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ]

    async def go():
        server, port, state = await _canned(responses, close_after=True)
        client = FastClient("127.0.0.1", port, limit=1, timeout_s=2)
        got = [(await client.send(_get()))[:2] for _ in responses]
        await client.close()
        server.close()
        return got, state

    got, state = _run(go())
    assert got == [(200, "old"), (503, None), (200, None)]
    assert state["connections"] == 3


def test_head_response_has_no_body_even_with_content_length():
    async def go():
        server, port, _ = await _canned([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
        client = FastClient("127.0.0.1", port, limit=1, timeout_s=2)
        first = await client.send(_get(method="HEAD"))
        second = await client.send(_get())
        await client.close()
        server.close()
        return first[0], second[0]

    assert _run(go()) == (200, 200)


@pytest.mark.parametrize("reply, error", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", BadResponse),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Disconnected),
])
def test_malformed_or_truncated_responses_raise(reply, error):
    async def go():
        server, port, _ = await _canned([reply], close_after=True)
        client = FastClient("127.0.0.1", port, limit=1, timeout_s=2)
        try:
            await client.send(_get())
        finally:
            await client.close()
            server.close()

    with pytest.raises(error):
        _run(go())


def test_connect_failure_and_timeout_and_the_pool_limit():
    async def go():
        server, port, state = await _canned([], hang=True)
        refused = FastClient("127.0.0.1", _free_port(), limit=2, timeout_s=1)
        with pytest.raises(ConnectFailed):
            await refused.send(_get())
        client = FastClient("127.0.0.1", port, limit=2, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        began = loop.time()
        outcomes = await asyncio.gather(*(client.send(_get()) for _ in range(5)), return_exceptions=True)
        took = loop.time() - began
        await client.close()
        server.close()
        return outcomes, took, client.pool_waits, state

    outcomes, took, pool_waits, state = _run(go())
    assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
    assert took < 1.0                                      # the deadline covers the wait for a connection
    assert pool_waits == 3                                 # 5 requests, 2 connections
    assert state["connections"] <= 2 + 3                   # never more than the limit at once


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the parser fed by hand: every split of the bytes, what follows a response ------------------

class _Transport:
    def __init__(self):
        self.written, self.aborted = [], False

    def write(self, data):
        self.written.append(data)

    def abort(self):
        self.aborted = True


def _deliver(conn, piece: bytes) -> None:
    """Hand `piece` to the connection as its event loop would."""
    if hasattr(conn, "buffer_updated"):
        conn.read_buffer[:len(piece)] = piece
        conn.buffer_updated(len(piece))
    else:
        conn.data_received(piece)


@pytest.fixture(params=["uvloop", "asyncio"])
def connection(request):
    """Each kind of connection: a plain Protocol on uvloop, a BufferedProtocol on asyncio's loop."""
    from stack.load.fastclient import connection_class
    loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    yield lambda: connection_class(loop)(loop)
    loop.close()


def _feed(new_connection, data: bytes, step: int, method="GET", close_at_end=False):
    """A connection sent one request, then `data` arriving `step` bytes per read:
    (status, replica, keep) or the exception, and whether the connection was aborted."""
    conn = new_connection()
    transport = _Transport()
    conn.connection_made(transport)
    waiter = conn.send(b"request", method == "HEAD", math.inf)
    for i in range(0, len(data), step):
        _deliver(conn, data[i:i + step])
    if close_at_end:
        conn.connection_lost(None)
    if not waiter.done():
        return "pending", transport.aborted
    if waiter.exception() is not None:
        return type(waiter.exception()), transport.aborted
    return waiter.result()[:3], transport.aborted


FRAMINGS = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Replica: app-1\r\n\r\nhello", (200, "app-1", True)),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-replica: app-2\r\n\r\n"
     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n", (200, "app-2", True)),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 40\r\n\r\n", (304, None, True)),
    (b"HTTP/1.1 100 Continue\r\nX-Replica: early\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
     (201, None, True)),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", (200, None, True)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", (200, None, False)),
    # X-Replica however it is spelt, with optional whitespace; never a look-alike or the body's
    (b"HTTP/1.1 200 OK\r\nX-REPLICA:\t app-3 \r\nContent-Length: 0\r\n\r\n", (200, "app-3", True)),
    (b"HTTP/1.1 200 OK\r\nX-Replica-Set: s\r\nContent-Length: 19\r\n\r\n\r\nx-replica: fake\r\n",
     (200, None, True)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\nX-Replica: real\r\n\r\n\r\nx-replica: fake\r\n",
     (200, "real", True)),
]


@pytest.mark.parametrize("data, outcome", FRAMINGS)
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_every_framing_parses_the_same_however_the_bytes_are_split(connection, data, outcome, step):
    assert _feed(connection, data, step) == (outcome, False)


def test_close_delimited_body_ends_at_close_and_a_framed_one_cut_short_is_an_error(connection):
    until_close = b"HTTP/1.1 200 OK\r\nX-Replica: a\r\n\r\nsome body"
    assert _feed(connection, until_close, 3) == ("pending", False)
    assert _feed(connection, until_close, 3, close_at_end=True) == ((200, "a", False), False)
    cut_chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    assert _feed(connection, cut_chunked, 5, close_at_end=True) == (Disconnected, False)
    cut_shouted = b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 10\r\n\r\nhel"
    assert _feed(connection, cut_shouted, 5, close_at_end=True) == (Disconnected, False)
    cut_head = b"HTTP/1.1 200 OK\r\nContent-Le"
    assert _feed(connection, cut_head, 5, close_at_end=True) == (Disconnected, False)


def test_bytes_beyond_the_response_keep_it_but_retire_the_connection(connection):
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    another = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nX-Replica: other\r\n\r\n"
    assert _feed(connection, response + another, 4096) == ((200, None, False), False)       # an unasked-for response
    assert _feed(connection, response + b"\x00garbage", 4096) == ((200, None, False), False)
    # ... and bytes arriving after the response was handed over abort the connection
    assert _feed(connection, response + another, len(response)) == ((200, None, True), True)


def test_head_response_is_complete_at_its_head_and_the_next_response_parses(connection):
    conn = connection()
    conn.connection_made(_Transport())
    outcomes = []
    for method, data in (("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nX-Replica: h\r\n\r\n"),
                         ("GET", b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")):
        waiter = conn.send(b"request", method == "HEAD", math.inf)
        _deliver(conn, data)
        outcomes.append(waiter.result()[:3])
    assert outcomes == [(200, "h", True), (404, None, True)]


def test_not_http_is_a_bad_response_and_aborts(connection):
    assert _feed(connection, b"SSH-2.0-OpenSSH_9.2\r\n", 4096) == (BadResponse, True)
