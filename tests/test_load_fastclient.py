"""The lean HTTP client against a server that writes exact bytes: every body framing it claims."""
from __future__ import annotations

import asyncio

import pytest

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
