"""Running a LoadSpec: the open-loop scheduler, the closed-loop workers, and LoadRun.

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

from .. import quiet
from .bottleneck import judge
from .clients import classify, make_clients
from .closedloop import run_closed_users
from .mix import MixPlan, Prepared
from .openloop import Scheduled
from .recorder import Recorder
from .result import IntervalSnapshot, LoadResult
from .schedule import Arrivals
from .spec import LoadSpec

_DONE = object()
WARM_LATENCY_S = 0.005
DRAIN_POLL_S = 0.005
# The open loop's shortest nap: event loops wake at 1 ms granularity (asyncio's epoll
# timeout; uvloop's timers spin until a sub-ms one is due), so a shorter one buys no precision.
MIN_NAP_S = 0.001
OnInterval = Callable[[IntervalSnapshot], object]

_gc_users = 0
_gc_saved: tuple = ()


def _calm_gc(on: bool) -> None:
    """Keep the garbage collector from pausing the loop for tens of ms mid-run.

    A default full collection walks every live object (thousands of in-flight
    requests) and showed up as 100+ ms of send lag at 5,000 req/s. During a run,
    objects from setup are frozen, young collections happen rarely (the happy
    path makes almost no cyclic garbage; errors do, so they still get collected)
    and full collections wait until the end. Counted, as runs may overlap.
    """
    global _gc_users, _gc_saved
    if on:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(10_000, 20, 1_000_000)
        _gc_users += 1
    else:
        _gc_users -= 1
        if _gc_users == 0:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


class LoadRun:
    """One run in progress. Iterate it (async) for interval snapshots; await it for the result."""

    def __init__(self, spec: LoadSpec, on_interval: OnInterval | None = None):
        self.spec = spec
        self._on_interval = on_interval
        self._callback_errors: list[str] = []
        self._queue: asyncio.Queue = asyncio.Queue()
        self._snapshots: list[IntervalSnapshot] = []
        self._stopping = False
        self._task: asyncio.Task | None = None

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

    # -- the run -------------------------------------------------------------------------
    async def _run(self) -> LoadResult:
        try:
            # When test workers share the machine, a run waits for it to itself (stack/quiet.py).
            async with quiet.async_window():
                return await self._measured()
        finally:
            self._queue.put_nowait(_DONE)

    async def _measured(self) -> LoadResult:
        spec = self.spec
        open_loop = spec.mode == "open"
        plan = MixPlan(spec.request_mix, spec.url, spec.seed)
        rec = Recorder(r.label for r in spec.request_mix.requests)
        loop = asyncio.get_running_loop()
        clients = make_clients(spec)
        _calm_gc(True)
        try:
            if open_loop:
                await self._warm(clients)
            started_at = time.time()
            start = time.perf_counter()
            cpu_start = time.process_time()
            self._last_tick, self._last_cpu = start, cpu_start
            ticker = loop.create_task(self._tick(rec, start))
            # Throughput counts responses that arrived inside the sending window: past
            # capacity, the backlog answered afterwards is not throughput.
            window_mark = loop.call_later(spec.duration_s, rec.mark_window_end)
            try:
                if open_loop:
                    window_end = await self._open_loop(rec, plan, clients, start)
                else:
                    window_end = await self._closed_loop(rec, plan, clients, start)
            finally:
                ticker.cancel()
                window_mark.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            end, cpu_end = time.perf_counter(), time.process_time()
            wall = end - self._last_tick
            if wall > 0.1 * spec.interval_s or rec.w_sent or rec.w_done:     # the last, partial interval
                self._emit(rec.snapshot(end - start, wall, (cpu_end - self._last_cpu) / max(wall, 1e-9),
                                        open_loop))
            rec.pool_waits = sum(c.pool_waits for c in clients)
            return self._result(rec, started_at, start, window_end, end,
                                (cpu_end - cpu_start) / max(end - start, 1e-9))
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            _calm_gc(False)

    async def _warm(self, clients: list) -> None:
        """Open the connections the schedule will need at once, before it starts (like wrk):
        enough for the rate at 5 ms per request. Failures are left for the run to count."""
        spec = self.spec
        want = math.ceil(spec.rate * WARM_LATENCY_S / len(clients)) + 1
        await asyncio.gather(*(c.warm(want) for c in clients if hasattr(c, "warm")),
                             return_exceptions=True)

    async def _tick(self, rec: Recorder, start: float) -> None:
        interval, open_loop, k = self.spec.interval_s, self.spec.mode == "open", 1
        while True:
            await asyncio.sleep(max(0.0, start + k * interval - time.perf_counter()))
            now, cpu = time.perf_counter(), time.process_time()
            wall = now - self._last_tick
            snap = rec.snapshot(now - start, wall, (cpu - self._last_cpu) / max(wall, 1e-9), open_loop)
            self._last_tick, self._last_cpu = now, cpu
            self._emit(snap)
            k = max(k + 1, math.floor((now - start) / interval) + 1)   # skip ticks missed while busy

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

    @staticmethod
    async def _exchange(rec: Recorder, client, request: Prepared, t_from: float) -> None:
        """Send one request; record its latency from `t_from`, or why it failed."""
        try:
            status, replica, done_at = await client.send(request)
        except asyncio.CancelledError:
            rec.failure(request.label, "timeout", "still outstanding when the run's time was up")
            raise
        except Exception as exc:  # noqa: BLE001 - every request ends in exactly one class
            rec.failure(request.label, classify(exc), exc)
            return
        rec.response(request.label, status, replica, done_at - t_from)

    async def _open_loop(self, rec: Recorder, plan: MixPlan, clients: list, start: float) -> float:
        """Send each request at its intended time (uniform or Poisson arrivals), latency counted
        from then; returns the last send time."""
        spec, loop = self.spec, asyncio.get_running_loop()
        arrivals = Arrivals(spec.arrivals, spec.rate, spec.duration_s, spec.seed)
        exchange, n_clients, fast = self._exchange, len(clients), spec.client_kind == "fast"
        tasks: set[asyncio.Task] = set()

        i, last_sent, offset = 0, start, arrivals.next_offset()
        while offset is not None and not self._stopping:
            # Everything already due goes out now, in one batch: one wake-up per
            # batch instead of one sleeping task per request.
            now = time.perf_counter()
            while offset is not None and start + offset <= now:
                intended, client, request = start + offset, clients[i % n_clients], plan.next()
                rec.sent_one(time.perf_counter() - intended)
                if not (fast and client.send_now(request, Scheduled(rec, request.label, intended))):
                    task = loop.create_task(exchange(rec, client, request, intended))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
                offset = arrivals.next_offset()
            last_sent = time.perf_counter()
            if offset is not None:   # (in short naps, so stop() is noticed even at low rates)
                await asyncio.sleep(min(0.1, max(MIN_NAP_S, start + offset - time.perf_counter())))
        deadline = time.perf_counter() + spec.timeout_s
        await self._drain(tasks, deadline)
        while rec.in_flight > 0 and time.perf_counter() < deadline:     # those sent without a task
            await asyncio.sleep(DRAIN_POLL_S)
        for client in clients if fast else ():
            client.expire_all()
        return last_sent

    async def _closed_loop(self, rec: Recorder, plan: MixPlan, clients: list, start: float) -> float:
        """C workers, each sending its next request when the previous one has answered."""
        spec, exchange = self.spec, self._exchange
        stop_at = start + spec.duration_s

        async def worker(w: int) -> None:
            client = clients[w % len(clients)]
            while not self._stopping:
                began = time.perf_counter()
                if began >= stop_at:
                    return
                request = plan.next()
                rec.sent_one(None)
                await exchange(rec, client, request, began)

        if spec.client_kind == "fast":
            await run_closed_users(clients, rec, plan, spec.connections, stop_at, spec.timeout_s,
                                   lambda: self._stopping)
        else:
            workers = {asyncio.ensure_future(worker(w)) for w in range(spec.connections)}
            await self._drain(workers, stop_at + spec.timeout_s)
        return min(time.perf_counter(), stop_at)

    @staticmethod
    async def _drain(tasks: set, deadline: float) -> None:
        """Wait for `tasks` until `deadline`; what is left is cancelled and counted as timeouts."""
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=max(0.0, deadline - time.perf_counter()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _result(self, rec: Recorder, started_at: float, start: float, window_end: float,
                end: float, cpu: float) -> LoadResult:
        spec = self.spec
        window = window_end - start if self._stopping else max(window_end - start, spec.duration_s)
        window = max(window, 1e-6)
        result = LoadResult(
            mode=spec.mode, url=spec.url, spec=spec.to_dict(), started_at=started_at,
            duration_s=round(window, 4), elapsed_s=round(end - start, 4),
            sent=rec.sent, responses=rec.responses, ok=rec.ok, errors=dict(rec.errors),
            status_codes=dict(rec.status_codes), offered_rps=spec.rate,
            send_rps=rec.sent / window, throughput_rps=rec.responses_in_window() / window,
            latency=rec.latency, send_lag=rec.send_lag if spec.mode == "open" else None,
            replicas=rec.replicas, requests=rec.requests, connections=spec.pool_size,
            pool_waits=rec.pool_waits, cpu=round(cpu, 3), generator_bottleneck=False, warnings=[],
            intervals=list(self._snapshots), error_examples=dict(rec.error_examples))
        result.generator_bottleneck, result.warnings = judge(spec, result, stopped=self._stopping)
        result.warnings += [f"on_interval raised {e}; the run went on" for e in self._callback_errors]
        return result
