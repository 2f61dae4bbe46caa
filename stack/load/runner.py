"""Running a LoadSpec: the open-loop scheduler, the closed-loop workers, and the APIs.

    result = await run_load_async(spec)          # in a running loop (Jupyter)
    result = run_load(spec)                      # in a plain script

    run = start_load(spec)                       # live: one snapshot per interval
    async for snapshot in run:
        plot(snapshot)
    result = await run
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import math
import time
from typing import Callable

import aiohttp

from .mix import MixPlan, Prepared
from .recorder import Recorder
from .result import IntervalSnapshot, LoadResult
from .schedule import due_count, intended_time, total_requests
from .spec import LoadSpec
from .bottleneck import judge

_DONE = object()
OnInterval = Callable[[IntervalSnapshot], object]


def _make_sessions(spec: LoadSpec) -> list[aiohttp.ClientSession]:
    """One session (and connection pool) per source address; the pool limit is split."""
    addresses = spec.source_addresses or (None,)
    per_address = math.ceil(spec.pool_size / len(addresses))
    sessions = []
    for address in addresses:
        connector = aiohttp.TCPConnector(limit=per_address, limit_per_host=0,
                                         local_addr=(address, 0) if address else None)
        sessions.append(aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            headers={"User-Agent": "scalelab-load"}))
    return sessions


class LoadRun:
    """One run in progress. Iterate it (async) for interval snapshots; await it for the result."""

    def __init__(self, spec: LoadSpec, on_interval: OnInterval | None = None):
        self.spec = spec
        self._on_interval = on_interval
        self._callback_errors: list[str] = []
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._rec: Recorder | None = None
        self._snapshots: list[IntervalSnapshot] = []

    def start(self) -> "LoadRun":
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def stop(self) -> None:
        """Stop sending now; requests in flight still finish (or time out) and are counted."""
        self._stopping = True

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def result(self) -> LoadResult:
        self.start()
        return await self._task

    def __await__(self):
        return self.result().__await__()

    async def __aiter__(self):
        self.start()
        while True:
            item = await self._queue.get()
            if item is _DONE:
                self._queue.put_nowait(_DONE)    # a second iteration ends too
                return
            yield item

    # -- the run -------------------------------------------------------------------
    async def _run(self) -> LoadResult:
        spec = self.spec
        plan = MixPlan(spec.request_mix, spec.url, spec.seed)
        rec = self._rec = Recorder(r.label for r in spec.request_mix.requests)
        sessions = _make_sessions(spec)
        gc.freeze()          # setup objects out of the collector's way: shorter GC pauses
        loop = asyncio.get_running_loop()
        started_at = time.time()
        start = time.perf_counter()
        cpu_start = time.process_time()
        self._last_tick, self._last_cpu = start, cpu_start
        ticker = loop.create_task(self._tick(rec, start))
        try:
            if spec.mode == "open":
                window_end = await self._open_loop(rec, plan, sessions, start)
            else:
                window_end = await self._closed_loop(rec, plan, sessions, start)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
            gc.unfreeze()
        end = time.perf_counter()
        cpu = (time.process_time() - cpu_start) / max(end - start, 1e-9)
        last = self._last_tick
        if end - last > 0.001 or rec.w_done or rec.w_sent:      # the last, partial interval
            self._emit(rec.snapshot(end - start, end - last, (time.process_time() - self._last_cpu)
                                    / max(end - last, 1e-9), spec.mode == "open"))
        result = self._result(rec, started_at, start, window_end, end, cpu)
        self._queue.put_nowait(_DONE)
        return result

    async def _tick(self, rec: Recorder, start: float) -> None:
        k = 1
        while True:
            await asyncio.sleep(max(0.0, start + k * self.spec.interval_s - time.perf_counter()))
            now, cpu = time.perf_counter(), time.process_time()
            wall = now - self._last_tick
            snap = rec.snapshot(now - start, wall, (cpu - self._last_cpu) / max(wall, 1e-9),
                                self.spec.mode == "open")
            self._last_tick, self._last_cpu = now, cpu
            self._emit(snap)
            k = max(k + 1, math.floor((now - start) / self.spec.interval_s) + 1)

    def _emit(self, snapshot: IntervalSnapshot) -> None:
        self._snapshots.append(snapshot)
        self._queue.put_nowait(snapshot)
        if self._on_interval is None:
            return
        try:
            outcome = self._on_interval(snapshot)
            if inspect.isawaitable(outcome):
                asyncio.ensure_future(outcome)
        except Exception as exc:  # noqa: BLE001 - a plotting bug must not lose the measurements
            if len(self._callback_errors) < 3:
                self._callback_errors.append(f"{type(exc).__name__}: {exc}")

    async def _exchange(self, rec: Recorder, session: aiohttp.ClientSession, request: Prepared,
                        t_from: float) -> None:
        """Send one request; record its latency from `t_from`, or why it failed."""
        try:
            async with session.request(request.method, request.url, data=request.data,
                                       headers=request.headers) as response:
                await response.read()
                rec.response(request.label, response.status, response.headers.get("X-Replica"),
                             time.perf_counter() - t_from)
        except TimeoutError as exc:                 # aiohttp's timeouts subclass it
            rec.failure(request.label, "timeout", exc)
        except aiohttp.ClientConnectorError as exc:
            rec.failure(request.label, "connect", exc)
        except asyncio.CancelledError:
            rec.failure(request.label, "timeout", "still outstanding when the run's time was up")
            raise
        except Exception as exc:  # noqa: BLE001 - every request ends in exactly one class
            rec.failure(request.label, "other", exc)

    async def _open_loop(self, rec, plan, sessions, start) -> float:
        """Send request i at start + i/rate; returns when the last one was sent."""
        spec, loop = self.spec, asyncio.get_running_loop()
        rate, total = spec.rate, total_requests(spec.rate, spec.duration_s)
        per_session = math.ceil(spec.pool_size / len(sessions))
        busy = [0] * len(sessions)
        tasks: set[asyncio.Task] = set()

        async def one(index: int, intended: float) -> None:
            began = time.perf_counter()
            s = index % len(sessions)
            rec.sent_one(began - intended)
            if busy[s] >= per_session:
                rec.pool_waits += 1                 # waits for a connection; the wait is in its latency
            busy[s] += 1
            try:
                await self._exchange(rec, sessions[s], plan.next(), intended)
            finally:
                busy[s] -= 1

        i = 0
        last_sent = start
        while i < total and not self._stopping:
            # Everything already due goes out now, in one batch: one wake-up per
            # batch instead of one sleeping task per request.
            due = due_count(start, time.perf_counter(), rate, total)
            while i < due:
                task = loop.create_task(one(i, intended_time(start, i, rate)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            last_sent = time.perf_counter()
            if i < total:
                await asyncio.sleep(max(0.0, intended_time(start, i, rate) - time.perf_counter()))
        await asyncio.sleep(0)                      # let the last batch start before the window closes
        await self._drain(tasks, time.perf_counter() + spec.timeout_s)
        return max(last_sent, start)

    async def _closed_loop(self, rec, plan, sessions, start) -> float:
        """C workers, each sending its next request when the previous one has answered."""
        spec = self.spec
        stop_at = start + spec.duration_s

        async def worker(w: int) -> None:
            session = sessions[w % len(sessions)]
            while not self._stopping and time.perf_counter() < stop_at:
                request = plan.next()
                began = time.perf_counter()
                rec.sent_one(None)
                await self._exchange(rec, session, request, began)

        workers = [asyncio.ensure_future(worker(w)) for w in range(spec.connections)]
        await self._drain(set(workers), stop_at + spec.timeout_s)
        return min(time.perf_counter(), stop_at)

    async def _drain(self, tasks: set, deadline: float) -> None:
        """Wait for `tasks` until `deadline`; what is left is cancelled and counted as timeouts."""
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=max(0.0, deadline - time.perf_counter()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _result(self, rec: Recorder, started_at: float, start: float, window_end: float,
                end: float, cpu: float) -> LoadResult:
        spec = self.spec
        window = max(window_end - start, spec.duration_s if not self._stopping else 1e-9)
        result = LoadResult(
            mode=spec.mode, url=spec.url, spec=spec.to_dict(), started_at=started_at,
            duration_s=round(window, 4), elapsed_s=round(end - start, 4),
            sent=rec.sent, responses=rec.responses, ok=rec.ok, errors=dict(rec.errors),
            status_codes=dict(rec.status_codes), offered_rps=spec.rate,
            send_rps=rec.sent / window, throughput_rps=rec.responses / window,
            latency=rec.latency, send_lag=rec.send_lag if spec.mode == "open" else None,
            replicas=rec.replicas, requests=rec.requests, connections=spec.pool_size,
            pool_waits=rec.pool_waits, cpu=round(cpu, 3), generator_bottleneck=False, warnings=[],
            intervals=[], error_examples=dict(rec.error_examples))
        result.intervals = self._snapshots
        result.generator_bottleneck, result.warnings = judge(spec, result, stopped=self._stopping,
                                                             loop=asyncio.get_running_loop())
        result.warnings += [f"on_interval raised {e}; the run went on" for e in self._callback_errors]
        return result
