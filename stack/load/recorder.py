"""Counts and histograms for one run: totals, plus the window of the current interval.

The hot path (one call per request) only increments counters and records into
HdrHistograms; percentiles are computed once per interval, off that path.
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
        self.sent = self.responses = self.ok = self.in_flight = self.pool_waits = 0
        self._responses_at_window_end: int | None = None
        self._new_window()

    def mark_window_end(self) -> None:
        self._responses_at_window_end = self.responses

    def responses_in_window(self) -> int:
        """Responses that arrived before the sending window closed (all of them if it never did)."""
        return self.responses if self._responses_at_window_end is None else self._responses_at_window_end

    def _new_window(self) -> None:
        self.w_latency = LatencyHistogram()
        self.w_lag = LatencyHistogram()
        self.w_sent = self.w_done = self.w_responses = 0
        self.w_errors = empty_errors()
        self.w_replicas: Counter = Counter()
        self.w_replica_latency: dict[str, LatencyHistogram] = {}

    # -- hot path ------------------------------------------------------------------
    def sent_one(self, lag_s: float | None) -> None:
        self.sent += 1
        self.w_sent += 1
        self.in_flight += 1
        if lag_s is not None:
            self.w_lag.record_s(lag_s)

    def response(self, label: str, status: int, replica: str | None, latency_s: float) -> None:
        us = int(latency_s * 1_000_000)
        self.in_flight -= 1
        self.responses += 1
        self.w_done += 1
        self.w_responses += 1
        self.w_latency.record_us(us)
        self.status_codes[status] += 1
        replica = replica or NO_REPLICA
        self.w_replicas[replica] += 1
        window = self.w_replica_latency.get(replica)
        if window is None:
            window = self.w_replica_latency[replica] = LatencyHistogram()
        window.record_us(us)
        group = self.replicas.get(replica)
        if group is None:
            group = self.replicas[replica] = GroupStats()
        kind = self.requests[label]
        group.count += 1
        group.latency.record_us(us)
        kind.count += 1
        if self.per_kind:
            kind.latency.record_us(us)
        if status >= 400:
            error = "5xx" if status >= 500 else "4xx"
            self.errors[error] += 1
            self.w_errors[error] += 1
            group.errors[error] += 1
            kind.errors[error] += 1
            if error not in self.error_examples:
                self.error_examples[error] = f"HTTP {status} from {replica} for {label}"
        else:
            self.ok += 1

    def failure(self, label: str, error: str, detail) -> None:
        """A request that got no response: connect, timeout or other."""
        self.in_flight -= 1
        self.w_done += 1
        self.errors[error] += 1
        self.w_errors[error] += 1
        self.requests[label].errors[error] += 1
        if error not in self.error_examples:
            text = f"{type(detail).__name__}: {detail}" if isinstance(detail, BaseException) else str(detail)
            self.error_examples[error] = f"{label}: {text}"

    # -- once per interval -------------------------------------------------------
    def snapshot(self, t_s: float, interval_s: float, cpu: float, open_loop: bool) -> IntervalSnapshot:
        """The current window as a snapshot; its histograms join the totals."""
        pct = self.w_latency.percentiles_ms((50.0, 95.0, 99.0))
        snap = IntervalSnapshot(
            t_s=round(t_s, 4), interval_s=round(interval_s, 4), sent=self.w_sent, completed=self.w_done,
            throughput_rps=self.w_responses / interval_s if interval_s > 0 else 0.0,
            p50_ms=pct[50.0], p95_ms=pct[95.0], p99_ms=pct[99.0], max_ms=self.w_latency.max_ms(),
            errors=dict(self.w_errors), replicas=dict(sorted(self.w_replicas.items())),
            in_flight=self.in_flight,
            send_lag_p99_ms=self.w_lag.percentile_ms(99.0) if open_loop else None,
            cpu=round(cpu, 3),
            replica_p99_ms={name: h.percentile_ms(99.0) for name, h in sorted(self.w_replica_latency.items())})
        self.latency.merge(self.w_latency)
        self.send_lag.merge(self.w_lag)
        self._new_window()
        if not self.per_kind:
            for kind in self.requests.values():
                kind.latency = self.latency
        return snap
