"""Panels: what each plot shows (a function from a run to named series) and the
FigureWidget plumbing that draws them over a scrolling window.

A panel's x axis is seconds since its run started, so a finished run kept as
dimmed "before" traces lines up with the current one (strategy A vs B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Series:
    name: str
    x: list
    y: list
    secondary: bool = False      # drawn against the right-hand y axis


@dataclass(frozen=True)
class PanelSpec:
    title: str
    y_title: str
    series: Callable[["object"], list[Series]]     # Run -> series
    y2_title: str | None = None


def _sample_series(run, pick: Callable, name: str, secondary: bool = False) -> Series:
    """One series from every sample; `pick(sample)` may return None for a gap."""
    return Series(name, [s.t - run.started_at for s in run.samples], [pick(s) for s in run.samples], secondary)


def _replica_names(run) -> list[str]:
    """Every replica that answered in any sample, app-1 first."""
    return sorted({n for s in run.samples for n in s.replicas}, key=lambda n: int(n.split("-")[1]))


def _per_replica(run, attribute: str, scale: float = 1.0) -> list[Series]:
    names = _replica_names(run)
    out = []
    for name in names:
        # A replica missing from a sample (not started yet, or scaled away) is a gap, not a zero.
        out.append(_sample_series(
            run, lambda s, n=name: getattr(s.replicas[n], attribute) * scale if n in s.replicas else None, name))
    return out


def throughput(run) -> list[Series]:
    x = [i.t - run.started_at for i in run.intervals]
    return [Series("throughput", x, [i.throughput_rps for i in run.intervals]),
            Series("p99", x, [i.p99_ms for i in run.intervals], secondary=True)]


SHARE_MIN_REQUESTS = 100     # per point: the share of 100 requests is within ~5 points of the true split
SHARE_MAX_WINDOW_S = 2.0


def share(run) -> list[Series]:
    """Each replica's part of the requests served, per sample; a sample with fewer than
    SHARE_MIN_REQUESTS joins the samples just before it (at a 0.25 s interval and 150 req/s a
    sample holds ~40 requests, and least_conn's even split read 0-70%). Only samples with the same
    replicas answering, after the last control change and within SHARE_MAX_WINDOW_S, are joined:
    a point never mixes the stack before a change with the stack after it."""
    names = _replica_names(run)
    changes = sorted(run.started_at + at for at, _ in run.markers)
    out: dict[str, list] = {n: [] for n in names}
    for j, s in enumerate(run.samples):
        since = max([t for t in changes if t <= s.t], default=-math.inf)
        counts = {n: r.rps * s.interval_s for n, r in s.replicas.items()}
        first = j
        while sum(counts.values()) < SHARE_MIN_REQUESTS and first > 0:
            before = run.samples[first - 1]
            if (before.replicas.keys() != s.replicas.keys() or before.t <= since
                    or s.t - before.t > SHARE_MAX_WINDOW_S):
                break
            first -= 1
            for n, r in before.replicas.items():
                counts[n] += r.rps * before.interval_s
        total = sum(counts.values())
        for n in names:
            # Absent from this sample (not started yet, scaled away): a gap, not a zero.
            out[n].append(None if n not in s.replicas else 100.0 * counts[n] / total if total else 0.0)
    x = [s.t - run.started_at for s in run.samples]
    return [Series(n, x, out[n]) for n in names]


def replica_rps(run) -> list[Series]:
    return _per_replica(run, "rps")


def replica_p99(run) -> list[Series]:
    """p99 of each replica's responses per interval, as the load generator measured them."""
    names = sorted({n for i in run.intervals for n in i.replica_p99_ms if n.startswith("app-")},
                   key=lambda n: int(n.split("-")[1]))
    x = [i.t - run.started_at for i in run.intervals]
    return [Series(name, x, [i.replica_p99_ms.get(name) for i in run.intervals]) for name in names]


def cache(run) -> list[Series]:
    pct = lambda v: None if v is None else v * 100   # noqa: E731
    return [_sample_series(run, lambda s: pct(s.cache.app_hit_ratio), "app hit %"),
            _sample_series(run, lambda s: pct(s.cache.redis_hit_ratio), "redis hit %")]


def lag(run) -> list[Series]:
    return [_sample_series(run, lambda s: s.postgres.lag_bytes, "lag bytes"),
            _sample_series(run, lambda s: s.postgres.lag_s, "lag s", secondary=True)]


def connections(run) -> list[Series]:
    def pooler(key):
        return lambda s: getattr(s.pgbouncer, key) if s.pgbouncer else None
    out = [_sample_series(run, pooler(k), f"pgbouncer {k}") for k in ("cl_active", "cl_waiting", "sv_active",
                                                                       "sv_idle")]
    for server in ("primary", "replica"):
        out.append(_sample_series(run, lambda s, r=server: s.postgres.connections.get(r, {}).get("total"),
                                  f"pg {server} connections"))
    return out


def pool(run, name: str = "read") -> list[Series]:
    """One app pool, summed over the replicas (their /metrics): connections open and requests
    waiting for one; beside them the p99 the load generator measured."""
    def total(key):
        return lambda s: sum(r.pools.get(name, {}).get(key, 0) for r in s.replicas.values()) \
            if s.replicas else None
    x = [i.t - run.started_at for i in run.intervals]
    return [_sample_series(run, total("size"), f"{name} pool: connections open"),
            _sample_series(run, total("waiting"), f"{name} pool: requests waiting"),
            Series("p99", x, [i.p99_ms for i in run.intervals], secondary=True)]


def work(run) -> list[Series]:
    return (_per_replica(run, "busy") +
            [Series(f"{s.name} queued", s.x, s.y, True) for s in _per_replica(run, "queued")])


PANELS: dict[str, PanelSpec] = {
    "throughput": PanelSpec("Throughput and p99 (load generator)", "responses/s", throughput, "p99 ms"),
    "share": PanelSpec("Share of traffic per replica", "% of requests", share),
    "rps": PanelSpec("Requests/s per replica", "req/s", replica_rps),
    "replica_p99": PanelSpec("p99 per replica (load generator)", "p99 ms", replica_p99),
    "cache": PanelSpec("Cache hit ratio", "hit %", cache),
    "lag": PanelSpec("Replication lag", "bytes", lag, "seconds"),
    "connections": PanelSpec("Pool and server connections", "connections", connections),
    "pool": PanelSpec("Read pool, all replicas (their /metrics)", "connections / requests", pool, "p99 ms"),
    "work": PanelSpec("/work slots per replica", "busy", work, "queued"),
}


class PanelView:
    """One FigureWidget. Traces are added as series appear (a new replica) and
    keep their colour; earlier runs are drawn dimmed and dotted."""

    def __init__(self, name: str, spec: PanelSpec, height: int = 260):
        self.name, self.spec = name, spec
        layout = dict(title=dict(text=spec.title, font=dict(size=13)), height=height,
                      margin=dict(l=55, r=70 if spec.y2_title else 15, t=35, b=35),
                      xaxis=dict(title="seconds since the run started"), yaxis=dict(title=spec.y_title, rangemode="tozero"),
                      legend=dict(font=dict(size=10)), showlegend=True, autosize=True, uirevision="keep")
        if spec.y2_title:
            # tickmode "auto": an overlaying axis defaults to "sync", ticks at the left axis's grid
            # lines, which labelled p99 0, 189, 378 ms. The legend moves right of its tick labels.
            layout["yaxis2"] = dict(title=spec.y2_title, overlaying="y", side="right", rangemode="tozero",
                                    showgrid=False, tickmode="auto")
            layout["legend"] = dict(font=dict(size=10), x=1.14, xanchor="left")
        self.figure = go.FigureWidget(layout=layout)
        self._traces: dict[str, int] = {}       # trace name -> index in figure.data
        self._colours: dict[str, str] = {}
        self._markers_drawn: tuple = ()

    def _colour(self, series_name: str) -> str:
        if series_name not in self._colours:
            self._colours[series_name] = PALETTE[len(self._colours) % len(PALETTE)]
        return self._colours[series_name]

    def _trace(self, name: str, series: Series, dimmed: bool):
        if name not in self._traces:
            line = dict(color=self._colour(series.name), width=1.5 if dimmed else 2,
                        dash="dot" if dimmed else "solid")
            self.figure.add_scatter(name=name, mode="lines", line=line, opacity=0.35 if dimmed else 1.0,
                                    yaxis="y2" if series.secondary else "y", connectgaps=False,
                                    legendgroup=series.name)
            self._traces[name] = len(self.figure.data) - 1
        return self.figure.data[self._traces[name]]

    def draw(self, current, before: list, x_range: tuple[float, float], markers: list[tuple[float, str]]) -> None:
        low, high = x_range
        wanted: dict[str, tuple[Series, bool]] = {}
        for run in before:
            for s in self.spec.series(run):
                wanted[f"{s.name} ({run.label})"] = (s, True)
        if current is not None:
            for s in self.spec.series(current):
                wanted[s.name] = (s, False)
        with self.figure.batch_update():
            for name, (series, dimmed) in wanted.items():
                trace = self._trace(name, series, dimmed)
                # Only the visible window (plus one point either side) goes to the browser.
                keep = [i for i, x in enumerate(series.x) if low - 1 <= x <= high + 1]
                trace.x = [series.x[i] for i in keep]
                trace.y = [series.y[i] for i in keep]
            for name, index in self._traces.items():
                if name not in wanted:
                    self.figure.data[index].x, self.figure.data[index].y = [], []
            self.figure.layout.xaxis.range = [low, high]
            visible = tuple(m for m in markers if low <= m[0] <= high)
            if visible != self._markers_drawn:
                self._markers_drawn = visible
                self.figure.layout.shapes = [dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="paper",
                                                  line=dict(color="#555", width=1, dash="dash"))
                                             for x, _ in visible]
                self.figure.layout.annotations = [dict(x=x, y=1, xref="x", yref="paper", text=text,
                                                       showarrow=False, xanchor="left", yanchor="top",
                                                       font=dict(size=10, color="#333"),
                                                       bgcolor="rgba(255,255,255,0.7)")
                                                  for x, text in visible]

    def trace_data(self) -> dict[str, tuple[list, list]]:
        """name -> (x, y) as currently drawn (for tests and for reading values back)."""
        return {t.name: (list(t.x or ()), list(t.y or ())) for t in self.figure.data}
