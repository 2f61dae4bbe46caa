"""Figures for lesson 4 (read replicas): each takes the DataFrame its experiment in
`stack.course.replication` returned."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import _style, with_prediction

SERVER_COLORS = {"primary": "#d62728", "replica": "#1f77b4"}


def primary_load(table) -> go.Figure:
    """Commits/s each server counted (pg_stat_database), reads on the replica vs on the primary."""
    fig = go.Figure()
    x = [f"reads on the {v}" for v in table.index]
    for server in ("primary", "replica"):
        fig.add_bar(x=x, y=table[f"{server}_tps"], name=f"{server}: transactions/s (its pg_stat_database)",
                    marker_color=SERVER_COLORS[server])
    fig.update_layout(barmode="group", yaxis_title="transactions per second")
    return _style(fig, "The same read-heavy mix: who does the work")


def anomaly_vs_delay(table, predicted: str | None = None) -> go.Figure:
    """Read-your-writes anomaly rate, and how long the stale value stayed visible, per apply delay."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("reads right after a write that missed it (%)",
                                                        "how long the old value stayed visible (ms)"))
    x = list(table.index)
    fig.add_scatter(x=x, y=table["anomaly_rate"] * 100, mode="lines+markers", name="stale reads, measured",
                    row=1, col=1)
    if predicted:
        with_prediction(fig, predicted, row=1, col=1)
    fig.add_scatter(x=x, y=table["stale_ms_median"], mode="lines+markers", name="stale window (median)",
                    row=1, col=2)
    fig.add_scatter(x=x, y=x, mode="lines", name="the delay itself", line=dict(dash="dot", color="#999"),
                    row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="replica apply delay (ms)", row=1, col=col)
    return _style(fig, "Read-your-writes through the app: PUT, then GET the same user")


def sync_tradeoff(table) -> go.Figure:
    """Each synchronous_commit mode at each delay: write latency (cost) against stale reads (benefit)."""
    fig = go.Figure()
    colors = {"on": "#7f7f7f", "remote_write": "#ff7f0e", "remote_apply": "#2ca02c"}
    for mode in table.index.get_level_values("synchronous_commit").unique():
        part = table.xs(mode, level="synchronous_commit")
        fig.add_scatter(x=part["write_ms_p50"], y=part["anomaly_rate"] * 100, mode="markers+text",
                        text=[f"delay {d} ms" for d in part.index], textposition="top center",
                        name=f"synchronous_commit={mode}", marker=dict(size=13, color=colors.get(mode)))
    fig.update_layout(xaxis_title="write latency, p50 (ms, PUT through the app)",
                      yaxis_title="reads right after the write that missed it (%)", xaxis_type="log")
    return _style(fig, "The trade-off: consistent reads cost write latency")


def window_fix(table) -> go.Figure:
    fig = go.Figure()
    x = [f"{w:g} ms" for w in table.index]
    fig.add_bar(x=x, y=table["stale_reads"] * 100, name="writer's stale reads (%)", marker_color="#d62728")
    fig.add_bar(x=x, y=table["reads_on_replica"] * 100, name="all reads answered by the replica (%)",
                marker_color="#1f77b4")
    fig.update_layout(barmode="group", xaxis_title="read-after-write window (reads go to the primary)",
                      yaxis_title="%")
    return _style(fig, "Read-after-write from the primary for a window")


def failover_timeline(table) -> go.Figure:
    """Per quarter second: reads answered by each server, and errors; dashed: replica killed."""
    fig = go.Figure()
    width = 0.2
    for column in table.columns:
        color = SERVER_COLORS.get(column, "#000000" if column.startswith("error") else "#999")
        fig.add_bar(x=table.index, y=table[column], name=f"answered by the {column}"
                    if column in SERVER_COLORS else column, marker_color=color, width=width)
    fig.add_vline(x=table.attrs.get("killed_at_s", 0), line_dash="dash",
                  annotation_text="postgres-replica killed")
    fig.update_layout(barmode="stack", xaxis_title="seconds into the run", yaxis_title="reads per 0.25 s")
    return _style(fig, "The replica dies: reads move to the primary (the response's \"db\" field)")
