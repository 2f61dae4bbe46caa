"""Plotly figures for lesson 3: each takes the DataFrame a `stack.course.balancing` experiment returned."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import PREDICTION_COLOR, _style, with_prediction
from .predictions import prediction

REPLICA_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _replicas(columns) -> list[str]:
    return sorted((c for c in columns if str(c).startswith("app-")), key=lambda n: int(n.split("-")[1]))


def short_request_p99(table, name: str | None = None) -> go.Figure:
    """p99 of the short requests (and of the long ones) under each strategy."""
    fig = go.Figure()
    x = list(table.index)
    fig.add_bar(x=x, y=table["short_p99_ms"], name="short requests (5 ms of work): p99", marker_color="#1f77b4")
    fig.add_bar(x=x, y=table["long_p99_ms"], name="long requests (500 ms): p99", marker_color="#c7c7c7")
    fig.update_layout(barmode="group", yaxis_title="ms (log scale)", yaxis_type="log")
    if name:
        value = prediction(name).value
        if isinstance(value, dict):
            fig.add_scatter(x=list(value), y=list(value.values()), mode="markers", name="your prediction",
                            marker=dict(symbol="diamond", size=12, color=PREDICTION_COLOR))
    return _style(fig, "The same requests, two strategies: where do the short ones wait?")


def shares_by_concurrency(table, weights, name: str | None = None) -> go.Figure:
    """Each replica's share of requests at each number of concurrent clients; dotted: the weights' share."""
    fig = go.Figure()
    x = [str(c) for c in table.index]
    total = sum(weights)
    for i, replica in enumerate(_replicas(table.columns)):
        color = REPLICA_COLORS[i % len(REPLICA_COLORS)]
        fig.add_bar(x=x, y=table[replica] * 100, name=f"{replica} (weight {weights[i]})", marker_color=color)
        fig.add_hline(y=weights[i] / total * 100, line_dash="dot", line_color=color)
    if name:
        value = prediction(name).value
        if isinstance(value, dict):
            fig.add_scatter(x=[str(k) for k in value], y=list(value.values()), mode="markers",
                            name="your prediction for app-1",
                            marker=dict(symbol="diamond", size=12, color=PREDICTION_COLOR))
    fig.update_layout(barmode="group", xaxis_title="concurrent clients (closed loop)",
                      yaxis_title="% of requests", xaxis_type="category")
    return _style(fig, "least_conn with weights 3:1:1 — dotted lines: what the weights alone would give")


def replica_shares(frame, title: str, name: str | None = None) -> go.Figure:
    """One bar per replica: its share of the requests (and how many clients it serves, if known)."""
    fig = go.Figure()
    text = [f"{n} client(s)" for n in frame["clients"]] if "clients" in frame else None
    fig.add_bar(x=list(frame.index), y=frame["share"] * 100, text=text, marker_color="#1f77b4",
                name="measured share")
    fig.add_hline(y=100 / len(frame), line_dash="dot", line_color="#7f7f7f",
                  annotation_text="an even split")
    fig.update_layout(yaxis_title="% of requests")
    if name:
        with_prediction(fig, name)
    return _style(fig, title, 320)


def keys_moved(table, name: str | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_bar(x=list(table.index), y=table["moved_share"] * 100, name="keys that changed replica",
                marker_color="#d62728")
    fig.add_hline(y=float(table["ideal_share"].iloc[0]) * 100, line_dash="dot", line_color="#7f7f7f",
                  annotation_text="the least possible: the new replica's fair share")
    fig.update_layout(yaxis_title="% of clients / keys that moved", yaxis_range=[0, 100])
    if name:
        with_prediction(fig, name)
    return _style(fig, "One replica joins (4 -> 5): who has to move?", 320)


def keepalive(table) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("new upstream connections per second (counted by the replicas)",
                                                        "latency through nginx (ms)"))
    x = [f"keepalive {k}" if k else "keepalive off" for k in table.index]
    fig.add_bar(x=x, y=table["new_connections_per_s"], marker_color="#9467bd", showlegend=False, row=1, col=1)
    fig.add_bar(x=x, y=table["p50_ms"], name="p50", marker_color="#1f77b4", row=1, col=2)
    fig.add_bar(x=x, y=table["p99_ms"], name="p99", marker_color="#aec7e8", row=1, col=2)
    fig.update_layout(barmode="group")
    return _style(fig, "Keeping upstream connections open")


def health(table) -> go.Figure:
    fig = go.Figure()
    fig.add_bar(x=list(table.index), y=table["failed_share_after_kill"] * 100, marker_color="#d62728",
                text=[f"{int(f)} of {int(s)}" for f, s in zip(table["failed_after_kill"], table["sent_after_kill"])],
                name="requests failed after the kill")
    fig.update_layout(yaxis_title="% of requests after the kill that failed")
    return _style(fig, "app-2 killed under load: what the users saw", 340)


def strategies(table) -> go.Figure:
    """Every strategy on the same short/long mix: short-request p99 and how unevenly requests spread."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("p99 of short requests (ms, log)",
                                                        "busiest replica's share vs quietest (%)"))
    x = list(table.index)
    fig.add_bar(x=x, y=table["short_p99_ms"], marker_color="#1f77b4", showlegend=False, row=1, col=1)
    fig.add_bar(x=x, y=table["max_share"] * 100, name="busiest replica", marker_color="#ff7f0e", row=1, col=2)
    fig.add_bar(x=x, y=table["min_share"] * 100, name="quietest replica", marker_color="#2ca02c", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(barmode="group")
    return _style(fig, "Four strategies, one workload (1 request in 10 takes 100x longer)")
