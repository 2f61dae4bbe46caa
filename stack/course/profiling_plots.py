"""Figures for lesson 8: each takes what stack.course.profiling measured."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import LAYER_COLORS, _style, with_prediction

LAYER_NAMES = {"queue": "waiting for a work slot", "db": "database (incl. waiting for a pooled connection)",
               "cache": "Redis", "app": "app code"}


def layers(prof) -> go.Figure:
    """Left: mean ms per request in each layer, per replica (Server-Timing, summed by each replica).
    Right: each replica's share of requests and its upstream p99 (nginx's access log)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ms per request, by layer (Server-Timing)",
                                                        "share of requests (nginx log)"))
    table = prof.layers
    for layer, label in LAYER_NAMES.items():
        fig.add_bar(x=list(table.index), y=table[f"{layer}_ms"], name=label,
                    marker_color=LAYER_COLORS[layer], row=1, col=1)
    if len(prof.nginx):
        fig.add_bar(x=list(prof.nginx.index), y=prof.nginx["share"], name="share of requests",
                    marker_color="#7f7f7f", showlegend=False,
                    text=[f"p99 {v:.0f} ms" for v in prof.nginx["upstream_p99_ms"]], row=1, col=2)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="ms", row=1, col=1)
    return _style(fig, "Where a request's time went, per replica, and how nginx spread them")


def icicle(flame: dict, title: str | None = None) -> go.Figure:
    """A replica's sampled Python stacks (pyinstrument) as an icicle: a box's width is its time."""
    frames = flame["frames"]
    fig = go.Figure(go.Icicle(
        ids=[str(f["id"]) for f in frames],
        parents=["" if f["parent"] is None else str(f["parent"]) for f in frames],
        labels=[f"{f['function']}" for f in frames],
        values=[f["seconds"] for f in frames],
        customdata=[f["where"] for f in frames],
        hovertemplate="%{label}<br>%{customdata}<br>%{value:.3f} s<extra></extra>",
        branchvalues="total", root_color="lightgrey", maxdepth=8))
    cpu = flame["cpu_seconds"] / flame["seconds"]
    return _style(fig, title or f"{flame['replica']}: {flame['seconds']:.1f} s sampled every "
                                f"{flame['interval_ms']:g} ms; its thread was on CPU {cpu:.0%} of it", 520)


def waterfall(table, predicted: str | None = None) -> go.Figure:
    """p99 after each fix as a waterfall (each bar: the change the step made), throughput beside it."""
    p99 = list(table["p99_ms"])
    steps = list(table.index)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                        subplot_titles=("p99 (ms) after each fix, in the article's order", "throughput (req/s)"))
    fig.add_trace(go.Waterfall(x=steps, y=[p99[0]] + [b - a for a, b in zip(p99, p99[1:])],
                               measure=["absolute"] + ["relative"] * (len(p99) - 1),
                               text=[f"{v:.0f}" for v in p99], textposition="outside",
                               decreasing=dict(marker_color="#2ca02c"), increasing=dict(marker_color="#d62728"),
                               name="p99"), row=1, col=1)
    fig.add_scatter(x=steps, y=table["throughput_rps"], mode="lines+markers", name="served req/s",
                    line_color="#1f77b4", row=1, col=2)
    fig.add_hline(y=300, line_dash="dot", line_color="#999", annotation_text="offered", row=1, col=2)
    if predicted:
        with_prediction(fig, predicted, row=1, col=1)
    fig.update_xaxes(tickangle=-25)
    return _style(fig, "Fixing in order, measuring each step", 440)


def profiler_cost(table) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(table.index), y=table["throughput_rps"], marker_color=["#1f77b4", "#ff7f0e"],
                           text=[f"{v:.0%}" for v in table["relative_rps"]], textposition="outside"))
    fig.update_layout(yaxis_title="req/s (closed loop, 8 connections, one replica)")
    return _style(fig, "What sampling every millisecond costs the replica", 320)
