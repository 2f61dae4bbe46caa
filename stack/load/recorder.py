"""Counts and histograms for one run: totals, plus the window of the current interval.

The hot path (one call per request) only increments counters and appends each
latency to its replica's list (and its request kind's); the lists go into
HdrHistograms in one batch per interval, and percentiles are computed then too.
"""
from __future__ import annotations

from collections import Counter

from .histogram import LatencyHistogram
from .result import GroupStats, IntervalSnapshot, empty_errors

NO_REPLICA = "(none)"     # a response without X-Replica, e.g. nginx's own 502 page


class Recorder:
    def __init__(self, labels):
        self.latency = LatencyHistogram()      # merged from the windows at each snapshot
        self.send_lag = LatencyHistogram()
        self.replicas: dict[str, GroupStats] = {}
        self.requests: dict[str, GroupStats] = {label: GroupStats() for label in labels}
        # With one kind of request its histogram is the total one: skip recording it twice.
        self.per_kind = len(self.requests) > 1
        self.errors = empty_errors()
        self.error_examples: dict[str, str] = {}
        self.status_codes: Counter = Counter()
        self.sent = self.responses = self.in_flight = self.pool_waits = 0
        # Reused at every snapshot (cleared, not made anew: a new one costs ~0.4 ms).
        self._window, self._one_replica, self._lag = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
        self._responses_at_window_end: int | None = None
        self._new_window()

    # Derived, not counted on the hot path:
    @property
    def ok(self) -> int:
        """Responses with a status below 400."""
        return self.responses - self.errors["4xx"] - self.errors["5xx"]

    @property
    def w_done(self) -> int:
        """Requests that ended in the current window, with a response or without."""
        return self.w_responses + self.w_failures

    def mark_window_end(self) -> None:
        self._responses_at_window_end = self.responses

    def responses_in_window(self) -> int:
        """Responses that arrived before the sending window closed (all of them if it never did)."""
        return self.responses if self._responses_at_window_end is None else self._responses_at_window_end

    def _new_window(self) -> None:
        self.w_lag_us: list[int] = []
        self.w_sent = self.w_responses = self.w_failures = 0
        self.w_errors = empty_errors()
        self.w_latency_us: dict[str, list[int]] = {}        # replica -> latencies this window
        self.w_kind_us: dict[str, list[int]] = {label: [] for label in self.requests}

    # -- hot path ------------------------------------------------------------------
    def sent_one(self, lag_s: float | None) -> None:
        self.sent += 1
        self.w_sent += 1
        self.in_flight += 1
        if lag_s is not None:
            self.w_lag_us.append(int(lag_s * 1_000_000))

    def response(self, label: str, status: int, replica: str | None, latency_s: float) -> None:
        us = int(latency_s * 1_000_000)
        self.in_flight -= 1
        self.responses += 1
        self.w_responses += 1
        self.status_codes[status] += 1
        replica = replica or NO_REPLICA
        latencies = self.w_latency_us.get(replica)
        if latencies is None:
            latencies = self.w_latency_us[replica] = []
        latencies.append(us)
        if self.per_kind:
            self.w_kind_us[label].append(us)
        if status >= 400:
            self._http_error(label, status, replica)

    def _http_error(self, label: str, status: int, replica: str) -> None:
        error = "5xx" if status >= 500 else "4xx"
        self.errors[error] += 1
        self.w_errors[error] += 1
        self._replica(replica).errors[error] += 1
        self.requests[label].errors[error] += 1
        if error not in self.error_examples:
            self.error_examples[error] = f"HTTP {status} from {replica} for {label}"

    def _replica(self, name: str) -> GroupStats:
        group = self.replicas.get(name)
        if group is None:
            group = self.replicas[name] = GroupStats()
        return group

    def failure(self, label: str, error: str, detail) -> None:
        """A request that got no response: connect, timeout or other."""
        self.in_flight -= 1
        self.w_failures += 1
        self.errors[error] += 1
        self.w_errors[error] += 1
        self.requests[label].errors[error] += 1
        if error not in self.error_examples:
            text = f"{type(detail).__name__}: {detail}" if isinstance(detail, BaseException) else str(detail)
            self.error_examples[error] = f"{label}: {text}"

    # -- once per interval -------------------------------------------------------
    def snapshot(self, t_s: float, interval_s: float, cpu: float, open_loop: bool) -> IntervalSnapshot:
        """The current window as a snapshot; its latencies join the totals."""
        window, h, lag = self._window, self._one_replica, self._lag
        window.clear()
        replica_p99, replicas = {}, {}
        for name, latencies in sorted(self.w_latency_us.items()):
            h.clear()
            h.record_many_us(latencies)
            group = self._replica(name)
            group.count += len(latencies)
            group.latency.merge(h)
            window.merge(h)
            replicas[name], replica_p99[name] = len(latencies), h.percentile_ms(99.0)
        lag.clear()
        lag.record_many_us(self.w_lag_us)
        pct = window.percentiles_ms((50.0, 95.0, 99.0))
        snap = IntervalSnapshot(
            t_s=round(t_s, 4), interval_s=round(interval_s, 4), sent=self.w_sent, completed=self.w_done,
            throughput_rps=self.w_responses / interval_s if interval_s > 0 else 0.0,
            p50_ms=pct[50.0], p95_ms=pct[95.0], p99_ms=pct[99.0], max_ms=window.max_ms(),
            errors=dict(self.w_errors), replicas=replicas, in_flight=self.in_flight,
            send_lag_p99_ms=lag.percentile_ms(99.0) if open_loop else None,
            cpu=round(cpu, 3), replica_p99_ms=replica_p99)
        self.latency.merge(window)
        self.send_lag.merge(lag)
        if self.per_kind:
            for label, latencies in self.w_kind_us.items():
                self.requests[label].count += len(latencies)
                self.requests[label].latency.record_many_us(latencies)
        else:
            next(iter(self.requests.values())).count += self.w_responses
            for kind in self.requests.values():
                kind.latency = self.latency
        self._new_window()
        return snap
