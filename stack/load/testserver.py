"""A tiny, fast HTTP server for tests, benchmarks and lessons on measurement.

It answers like the app (an `X-Replica` header on every response) and can
misbehave on purpose:

    /status/503   answer with that status
    /sleep/20     answer after 20 ms          /hang   never answer
    /drop         close the connection without answering
    /bye          answer with "Connection: close", then close (as nginx does every 1000 requests)
    anything else 200 {"ok": true}

`identities=("app-1", "app-2")` answers as each in turn (like a round-robin
balancer) and `delays_ms={"app-2": 20}` makes one of them slow. `stall=(0.5, 1.0)`
holds every request that arrives from 0.5 s to 1.5 s after the first one
until the stall ends: the server pause that coordinated omission hides.

    with TestServer(identities=("app-1", "app-2")) as server:
        run_load(url=server.url, mode="open", rate=100, duration_s=1)

`python -m stack.load.testserver --port 8099` runs one in the foreground.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


class _Connection(asyncio.Protocol):
    def __init__(self, server: "TestServer"):
        self.server = server
        self.buffer = b""
        self.busy = False          # one request at a time per connection: answers stay in order
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        self.buffer += data
        self._next()

    def _next(self):
        if self.busy or self.transport is None:
            return
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = self.buffer[:head_end].decode("latin-1").split("\r\n")
        length, close, forwarded = 0, False, None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "x-forwarded-for":
                forwarded = value.strip()
        if len(self.buffer) < head_end + 4 + length:
            return
        body = self.buffer[head_end + 4: head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length:]
        method, target = (lines[0].split(" ") + ["", ""])[:2]
        self.busy = True
        self.server._handle(self, method, target, body, close, forwarded)

    def respond(self, status: int, payload: bytes, replica: str, head_only: bool, close: bool):
        if self.transport is None:
            return
        headers = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                   f"X-Replica: {replica}\r\nServer-Timing: app;dur=0\r\n"
                   + ("Connection: close\r\n" if close else "") + "\r\n")
        self.transport.write(headers.encode() + (b"" if head_only else payload))
        if close:
            self.transport.close()
            return
        self.busy = False
        self._next()


class TestServer:
    """Runs in a background thread with its own loop; `.url` once started."""
    __test__ = False           # not a pytest test class

    def __init__(self, identities=("test-1",), delays_ms: dict | None = None,
                 stall: tuple[float, float] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.identities = tuple(identities)
        self.delays_ms = dict(delays_ms or {})
        self.stall = stall
        self.host, self.port = host, port
        self.served: Counter = Counter()        # responses per identity
        self.seen: Counter = Counter()          # "METHOD path" per request received
        self.bodies: list[bytes] = []           # the first bodies received, for tests
        self.peers: Counter = Counter()         # client source addresses
        self.forwarded: Counter = Counter()     # (source address, X-Forwarded-For or None) per request
        self.stalled = 0                        # requests held by the stall
        self.connections = 0                    # connections accepted
        self._turn = 0
        self._first: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- request handling (runs on the server's loop) --------------------------------
    def _handle(self, conn: _Connection, method: str, target: str, body: bytes, close: bool,
                forwarded: str | None = None):
        now = time.monotonic()
        if self._first is None:
            self._first = now
        path = target.split("?", 1)[0]
        self.seen[f"{method} {path}"] += 1
        if body and len(self.bodies) < 100:
            self.bodies.append(body)
        peer = conn.transport.get_extra_info("peername")
        if peer:
            self.peers[peer[0]] += 1
            self.forwarded[(peer[0], forwarded)] += 1
        replica = self.identities[self._turn % len(self.identities)]
        self._turn += 1
        parts = path.strip("/").split("/")
        status, delay = 200, self.delays_ms.get(replica, 0) / 1000
        if parts[0] == "hang":
            return                                   # never answers; the client must time out
        if parts[0] == "drop":
            conn.transport.close()
            return
        if parts[0] == "bye":
            close = True
        elif parts[0] == "status" and len(parts) > 1 and parts[1].isdigit():
            status = int(parts[1])
        elif parts[0] == "sleep" and len(parts) > 1:
            delay += float(parts[1]) / 1000
        if self.stall:
            begin = self._first + self.stall[0]
            end = begin + self.stall[1]
            if begin <= now < end:
                self.stalled += 1
                delay = max(delay, end - now)
        payload = json.dumps({"ok": status < 400, "replica": replica}).encode()

        def answer():
            self.served[replica] += 1
            conn.respond(status, payload, replica, method == "HEAD", close)

        if delay > 0:
            self._loop.call_later(delay, answer)
        else:
            answer()

    # -- lifecycle -------------------------------------------------------------------------
    async def serve(self, ready: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        server = await self._loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                backlog=4096)
        self.port = server.sockets[0].getsockname()[1]
        if ready:
            ready.set()
        async with server:
            await server.serve_forever()

    def start(self) -> "TestServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve_until_stopped(ready)),
                                        name="stack-load-testserver", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("the test server did not start within 5 s")
        return self

    async def _serve_until_stopped(self, ready):
        self._main = asyncio.current_task()
        try:
            await self.serve(ready)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join(5)

    def __enter__(self) -> "TestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--identities", default="test-1", help="comma-separated X-Replica names")
    args = parser.parse_args(argv)
    server = TestServer(tuple(args.identities.split(",")), host=args.host, port=args.port)
    ready = threading.Event()
    threading.Thread(target=lambda: (ready.wait(), print(server.url, flush=True)), daemon=True).start()
    try:
        asyncio.run(server.serve(ready))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
