"""What a run reports: a snapshot per interval while it runs, and a final LoadResult."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .histogram import LatencyHistogram

# Every failure lands in exactly one class; nothing is dropped.
ERROR_CLASSES = ("connect", "timeout", "4xx", "5xx", "other")


def empty_errors() -> dict[str, int]:
    return dict.fromkeys(ERROR_CLASSES, 0)


@dataclass
class IntervalSnapshot:
    """One interval of a running load; `t_s` is the interval's end, seconds since start."""
    t_s: float
    interval_s: float
    sent: int                    # requests that left the generator in this interval
    completed: int               # requests that finished (response or error) in it
    throughput_rps: float        # responses (any status) per second
    p50_ms: float | None         # latency of responses completed in this interval
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: dict[str, int]
    replicas: dict[str, int]     # responses per X-Replica
    in_flight: int               # outstanding at the end of the interval
    send_lag_p99_ms: float | None   # open loop only
    cpu: float                   # generator CPU seconds per wall second (1.0 = one core)
    replica_p99_ms: dict[str, float] = field(default_factory=dict)   # p99 of each replica's responses

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupStats:
    """Responses and latency for one replica or one request kind."""
    count: int = 0               # responses (any status)
    errors: dict[str, int] = field(default_factory=empty_errors)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def to_dict(self) -> dict:
        return {"count": self.count, "errors": {k: v for k, v in self.errors.items() if v},
                "latency": self.latency.summary(), "histogram": self.latency.encode()}


@dataclass
class LoadResult:
    """The summary of one run. Latency percentiles cover requests that got a response
    (any status); connect errors and timeouts are counted in `errors` instead."""
    mode: str
    url: str
    spec: dict
    started_at: float            # unix time
    duration_s: float            # the sending window actually used
    elapsed_s: float             # including waiting for the last responses
    sent: int
    responses: int               # got an HTTP response (any status)
    ok: int                      # ... of which status < 400
    errors: dict[str, int]
    status_codes: dict[int, int]
    offered_rps: float | None    # open loop: the schedule's rate
    send_rps: float              # requests actually sent per second of the window
    throughput_rps: float        # responses that arrived within the window, per second of it
    latency: LatencyHistogram
    send_lag: LatencyHistogram | None   # open loop: actual send - intended send
    replicas: dict[str, GroupStats]
    requests: dict[str, GroupStats]     # per request kind of the mix
    connections: int             # connection pool limit (closed loop: C)
    pool_waits: int              # requests that found every pooled connection busy
    cpu: float                   # generator CPU seconds per wall second
    generator_bottleneck: bool
    warnings: list[str]
    intervals: list[IntervalSnapshot]
    error_examples: dict[str, str] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self) -> dict:
        return self.latency.summary()

    def to_dict(self) -> dict:
        """Everything as JSON-able values; histograms also as HdrHistogram base64 (mergeable)."""
        return {
            "mode": self.mode, "url": self.url, "spec": self.spec, "started_at": self.started_at,
            "duration_s": self.duration_s, "elapsed_s": self.elapsed_s,
            "sent": self.sent, "responses": self.responses, "ok": self.ok,
            "errors": dict(self.errors), "error_examples": dict(self.error_examples),
            "status_codes": {str(k): v for k, v in sorted(self.status_codes.items())},
            "offered_rps": self.offered_rps, "send_rps": self.send_rps,
            "throughput_rps": self.throughput_rps,
            "latency": self.latency.summary(), "latency_histogram": self.latency.encode(),
            "send_lag": self.send_lag.summary() if self.send_lag else None,
            "replicas": {name: g.to_dict() for name, g in sorted(self.replicas.items())},
            "requests": {name: g.to_dict() for name, g in self.requests.items()},
            "connections": self.connections, "pool_waits": self.pool_waits, "cpu": self.cpu,
            "generator_bottleneck": self.generator_bottleneck, "warnings": list(self.warnings),
            "intervals": [s.to_dict() for s in self.intervals],
        }

    def to_dataframe(self):
        """One row per replica plus an "all" row: responses, share, errors, latency (ms)."""
        import pandas as pd
        rows = []
        groups = [("all", GroupStats(self.responses, self.errors, self.latency))]
        for name, g in sorted(self.replicas.items()):
            groups.append((name, g))
        for name, g in groups:
            s = g.latency.summary()
            rows.append({"replica": name, "responses": g.count,
                         "share": g.count / self.responses if self.responses else 0.0,
                         "errors": sum(g.errors.values()),
                         **{k: s[k] for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")}})
        return pd.DataFrame(rows).set_index("replica")

    def intervals_dataframe(self):
        """One row per interval, indexed by t_s; errors as err_<class>, replicas as rep_<name>."""
        import pandas as pd
        rows = []
        for s in self.intervals:
            row = {k: v for k, v in s.to_dict().items() if k not in ("errors", "replicas")}
            row.update({f"err_{k}": v for k, v in s.errors.items()})
            row.update({f"rep_{k}": v for k, v in s.replicas.items()})
            rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        rep_cols = [c for c in frame.columns if c.startswith("rep_")]
        frame[rep_cols] = frame[rep_cols].fillna(0).astype(int)
        return frame.set_index("t_s")

    def __repr__(self) -> str:
        s = self.latency.summary()
        return (f"LoadResult(mode={self.mode!r}, sent={self.sent}, responses={self.responses}, "
                f"throughput_rps={self.throughput_rps:.1f}, p50_ms={s['p50_ms']}, p99_ms={s['p99_ms']}, "
                f"errors={self.error_count}, generator_bottleneck={self.generator_bottleneck})")
