"""Plotly figures for lesson 6 (stack.course.sharding's tables)."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import PREDICTION_COLOR, _style
from .predictions import prediction


def distribution(table) -> go.Figure:
    """Rows per shard (left) and the share of requests each shard served, uniform vs Zipf keys (right)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rows on each server", "share of requests"))
    x = list(table.index)
    fig.add_bar(x=x, y=table["rows"], name="rows", marker_color="#7f7f7f", row=1, col=1)
    fig.add_bar(x=x, y=table["uniform_share"], name="uniform keys", marker_color="#1f77b4", row=1, col=2)
    fig.add_bar(x=x, y=table["zipf_share"], name="Zipf keys (hot users)", marker_color="#d62728", row=1, col=2)
    fig.add_hline(y=1 / len(x), line_dash="dot", annotation_text="fair share", row=1, col=2)
    return _style(fig, f"Users over {len(x)} shards ({table.attrs.get('scheme', '')})")


def region_traffic(table) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("statements per shard server", "latency (ms)"))
    shards = [c for c in table.columns if c.startswith("shard-")]
    for key, row in table.iterrows():
        fig.add_bar(x=shards, y=[row[c] for c in shards], name=f"shard key: {key}", row=1, col=1)
    fig.add_bar(x=list(table.index), y=table["p50_ms"], name="p50", marker_color="#2ca02c", row=1, col=2)
    fig.add_bar(x=list(table.index), y=table["p99_ms"], name="p99", marker_color="#9467bd", row=1, col=2)
    return _style(fig, "One busy region: who does the work")


def keys_moved(table, predicted: str | None = None) -> go.Figure:
    fig = go.Figure()
    x = list(table.index)
    fig.add_bar(x=x, y=table["predicted_share"], name="textbook (N/(N+1) or 1/(N+1))", marker_color="#c7c7c7")
    fig.add_bar(x=x, y=table["measured_share"], name="measured on the servers", marker_color="#1f77b4")
    value = prediction(predicted).value if predicted else None
    if isinstance(value, dict):
        fig.add_scatter(x=list(value), y=list(value.values()), mode="markers", name="your prediction",
                        marker=dict(symbol="diamond", size=12, color=PREDICTION_COLOR))
    fig.update_layout(barmode="group", yaxis_title="share of users that changed server", yaxis_tickformat=".0%")
    return _style(fig, "Adding one shard: how many users move")


def fanout_cost(table) -> go.Figure:
    fig = go.Figure()
    for query in table.index.get_level_values("query").unique():
        part = table.xs(query, level="query")
        fig.add_scatter(x=list(part.index), y=part["p50_ms"], mode="lines+markers", name=f"{query}, p50")
        fig.add_scatter(x=list(part.index), y=part["p99_ms"], mode="lines+markers", line=dict(dash="dash"),
                        name=f"{query}, p99")
    fig.update_layout(xaxis_title="shard servers", yaxis_title="latency (ms)")
    return _style(fig, "A query that must ask every shard pays for the slowest one")
