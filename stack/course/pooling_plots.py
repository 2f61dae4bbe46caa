"""Figures for lesson 5 (connection pooling): each takes the DataFrame its experiment in
`stack.course.pooling` returned."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import _style, reference_line, with_prediction

WAY_COLORS = ("#d62728", "#2ca02c", "#ff7f0e")


def connection_costs(table, predicted: str | None = None) -> go.Figure:
    """Queries/s and p50 per way of getting a connection (log scales: they differ 30-fold)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("queries per second (log)", "p50 latency, ms (log)"))
    x = list(table.index)
    colors = list(WAY_COLORS[:len(x)])
    fig.add_bar(x=x, y=table["queries_per_s"], marker_color=colors, name="queries/s", showlegend=False,
                text=[f"{v:.0f}" for v in table["queries_per_s"]], textposition="outside", row=1, col=1)
    fig.add_bar(x=x, y=table["p50_ms"], marker_color=colors, name="p50", showlegend=False,
                text=[f"{v:.1f} ms" for v in table["p50_ms"]], textposition="outside", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    if predicted:
        with_prediction(fig, predicted, row=1, col=1)
    return _style(fig, "The same one-row query, 8 clients: what getting a connection costs", 420)


def exhaustion(table, max_connections: int, predicted: str | None = None) -> go.Figure:
    """Per read-pool size: what the pools may open in all, and what the replica really held at the peak."""
    fig = go.Figure()
    x = [f"read pool {size} x {int(row.pools_max / size)} replicas" for size, row in table.iterrows()]
    fig.add_bar(x=x, y=table["pools_max"], name="the pools' limit, all replicas together (config)",
                marker_color="#c7c7c7")
    fig.add_bar(x=x, y=table["peak_replica_backends"], name="client backends at the peak (the replica's "
                "pg_stat_activity)", marker_color="#1f77b4")
    fig.add_hline(y=max_connections, line_dash="dash", line_color="#d62728",
                  annotation_text=f"max_connections = {max_connections}")
    if predicted:
        with_prediction(fig, predicted)
    fig.update_layout(barmode="group", yaxis_title="connections to the replica")
    return _style(fig, "Slow queries from every replica at once: who runs out first")


def bouncer_sharing(frame) -> go.Figure:
    """Client connections PgBouncer holds against server connections it uses, over the run."""
    fig = go.Figure()
    t = list(frame.index)
    fig.add_scatter(x=t, y=frame["cl_active"] + frame["cl_waiting"], name="client connections to PgBouncer",
                    mode="lines", line=dict(color="#ff7f0e"))
    fig.add_scatter(x=t, y=frame["cl_waiting"], name="... of them waiting for a server connection",
                    mode="lines", line=dict(color="#ff7f0e", dash="dot"))
    fig.add_scatter(x=t, y=frame["sv_active"] + frame["sv_idle"], name="server connections PgBouncer holds",
                    mode="lines", line=dict(color="#1f77b4"))
    fig.add_scatter(x=t, y=frame["primary_backends"], name="client backends on the primary (its own count)",
                    mode="lines", line=dict(color="#2ca02c", dash="dash"))
    if "primary_backends_before" in frame.attrs:
        reference_line(fig, "y", frame.attrs["primary_backends_before"], "primary's count before the clients",
                       "#2ca02c", dash="dot")
    fig.update_layout(xaxis_title="seconds (SHOW POOLS every 0.1 s)", yaxis_title="connections")
    return _style(fig, "Hundreds of clients, a handful of server connections (PgBouncer, transaction mode)")


def pool_sweep(table, predicted: str | None = None) -> go.Figure:
    """Served rate and p99 against the read pool size; Little's law's figure as a dashed line."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("answered OK per second", "p99 latency, ms (log)"))
    x = list(table.index)
    fig.add_scatter(x=x, y=table["ok_rps"], mode="lines+markers", name="answered OK/s", row=1, col=1)
    fig.add_scatter(x=x, y=table["served_rps"], mode="lines", name="all answers/s (503s too)",
                    line=dict(dash="dot", color="#999"), row=1, col=1)
    fig.add_scatter(x=x, y=table["p99_ms"], mode="lines+markers", name="p99", row=1, col=2)
    little = float(table["little_per_replica"].iloc[0])
    fig.update_yaxes(type="log", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="read pool per replica", type="log", tickvals=x, row=1, col=col)
        reference_line(fig, "x", little, "Little's law" if col == 1 else None, "#2ca02c", row=1, col=col)
        if predicted:
            with_prediction(fig, predicted, axis="x", row=1, col=col)
    return _style(fig, "Pool size under a fixed load: too small queues, then enough is enough")
