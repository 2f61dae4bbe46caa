"""Figures for lesson 7: each takes the DataFrame its experiment in stack.course.caching returned."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .caching import steady_hit_ratio
from .plots import _style, with_prediction

KIND_COLORS = {"uniform": "#1f77b4", "zipf": "#d62728"}


def hit_ratio_by_ttl(frame, rate: float, key_count: int, predicted: str | None = None) -> go.Figure:
    """Hit ratio (Redis INFO) and DB lookups/s (pg_stat_statements) against TTL, per key distribution;
    the steady-state model for uniform keys as a dotted line."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("hit ratio (Redis keyspace hits / lookups)",
                                                        "user lookups PostgreSQL ran per second"))
    for kind in frame.index.get_level_values("keys").unique():
        part = frame.xs(kind, level="keys")
        x = [str(t) for t in part.index]
        color = KIND_COLORS.get(kind)
        fig.add_scatter(x=x, y=part["hit_ratio"], name=f"{kind} keys", mode="lines+markers",
                        line_color=color, row=1, col=1)
        fig.add_scatter(x=x, y=part["db_lookups_per_s"], name=f"{kind}: DB lookups/s", mode="lines+markers",
                        line_color=color, line_dash="dot", row=1, col=2)
        if kind == "uniform":
            model = [steady_hit_ratio(rate / key_count, t) for t in part.index]
            fig.add_scatter(x=x, y=model, name="model λT/(λT+1), uniform", mode="lines",
                            line=dict(color="#7f7f7f", dash="dot"), row=1, col=1)
    if predicted:
        with_prediction(fig, predicted, row=1, col=1)
    fig.update_xaxes(title_text="TTL (s)")
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    return _style(fig, f"TTL vs hit ratio and database load ({rate:.0f} reads/s over {key_count} users)")


def stampede(frame) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("lookups PostgreSQL ran (pg_stat_statements)",
                                                        "reads that waited for the database"))
    x = list(frame.index)
    fig.add_bar(x=x, y=frame["db_lookups"], name="DB lookups", marker_color="#1f77b4", row=1, col=1)
    fig.add_bar(x=x, y=frame["slow_reads"], name="slow reads", marker_color="#d62728", row=1, col=2)
    return _style(fig, "A hot key expiring under 16 concurrent readers, per fix")


def synchronized_expiry(frame) -> go.Figure:
    fig = go.Figure()
    for jitter, row in frame.iterrows():
        tl = row["timeline"]
        fig.add_scatter(x=tl["t"], y=tl["lookups"], mode="lines", name=f"TTL jitter ±{jitter:.0%}")
    fig.update_layout(xaxis_title="seconds", yaxis_title="user lookups PostgreSQL has run")
    return _style(fig, "Keys cached together expire together: lookups counted at PostgreSQL")


def outage(frame) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=frame.index, y=frame["completed"], name="responses", marker_color="#2ca02c")
    errors = frame[[c for c in frame.columns if c.startswith("err_")]].sum(axis=1)
    fig.add_bar(x=frame.index, y=errors, name="errors", marker_color="#d62728")
    fig.add_scatter(x=frame.index, y=frame["p99_ms"], name="p99 ms", mode="lines+markers",
                    line_color="#9467bd", secondary_y=True)
    fig.add_vline(x=frame.attrs["total"]["killed_at_s"], line_dash="dash", annotation_text="Redis killed")
    fig.update_layout(barmode="stack", xaxis_title="seconds into the run")
    fig.update_yaxes(title_text="per 0.5 s", secondary_y=False)
    fig.update_yaxes(title_text="p99 ms", secondary_y=True, tickmode="auto", showgrid=False,  # own ticks
                     rangemode="tozero")
    return _style(fig, "Redis killed under load: the app answers from PostgreSQL")
