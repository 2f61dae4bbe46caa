"""Plotly figures for the lessons' experiments: each takes the DataFrame its experiment returned."""
from __future__ import annotations

import math
import numbers

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .predictions import prediction

LAYER_COLORS = {"cache": "#d62728", "db": "#1f77b4", "queue": "#9467bd", "app": "#2ca02c",
                "outside_app_ms": "#7f7f7f"}


def _style(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, template="plotly_white", margin=dict(l=60, r=30, t=60, b=50),
                      legend=dict(orientation="h", y=-0.2))
    _readable_log_ticks(fig)
    return fig


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks covering low..high (both > 0), one step beyond each end so the axis's padding
    gets a label too (plotly shows only those inside the range): 50, 100, 200, 500, 1000 ..."""
    steps = [m * 10.0 ** k for k in range(math.floor(math.log10(low)) - 1, math.floor(math.log10(high)) + 2)
             for m in (1, 2, 5)]
    below = [v for v in steps if v < low / 1.0001]
    above = [v for v in steps if v > high * 1.0001]
    inside = [v for v in steps if low / 1.0001 <= v <= high * 1.0001] or [float(f"{low:.2g}")]
    return below[-1:] + inside + above[:1]


def _tick_text(v: float) -> str:
    return f"{v / 1e6:g}M" if v >= 1e6 else f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _values(data) -> list:
    return [] if data is None else list(data)


def _readable_log_ticks(fig: go.Figure) -> None:
    """Plotly labels a log axis spanning a decade or two with lone digits (2, 3, ... 9) between the
    powers of ten; label 1-2-5 values in the data's range instead."""
    for name in [k for k in fig.layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]:
        axis = fig.layout[name]
        if axis.type != "log" or axis.tickvals is not None:
            continue
        letter, ref = name[0], name.replace("axis", "")
        values = [v for t in fig.data if (getattr(t, f"{letter}axis", None) or letter) == ref
                  for v in _values(getattr(t, letter, None)) if isinstance(v, numbers.Real) and v > 0]
        if values and max(values) / min(values) <= 1e4:     # wider: plotly's powers of ten read well
            ticks = log_ticks(min(values), max(values))
            axis.update(tickvals=ticks, ticktext=[_tick_text(v) for v in ticks])


PREDICTION_COLOR = "#ff7f0e"


def reference_line(fig: go.Figure, axis: str, value: float, text: str | None = None, color: str = "#555",
                   dash: str = "dash", row=None, col=None) -> go.Figure:
    """A dashed line at `value` on the x (axis="x": vertical) or y axis, labelled `text`.

    Plotly's own add_vline(annotation_text=...) places the label at `value` as if the axis were
    linear; on a log axis that is 10**value (a prediction of 40 ms stretched the chart to 1e40).
    Set the axis type before calling this."""
    where = {} if row is None else {"row": row, "col": col}
    (fig.add_vline(x=value, line_dash=dash, line_color=color, **where) if axis == "x" else
     fig.add_hline(y=value, line_dash=dash, line_color=color, **where))
    if text:
        sub = fig.get_subplot(row, col) if row is not None else None
        xaxis, yaxis = (sub.xaxis, sub.yaxis) if sub is not None else (fig.layout.xaxis, fig.layout.yaxis)
        ref = lambda ax: ax.plotly_name.replace("axis", "")     # noqa: E731 - "xaxis2" -> "x2"
        line_axis = xaxis if axis == "x" else yaxis
        at = math.log10(value) if line_axis.type == "log" and value > 0 else value
        if axis == "x":
            fig.add_annotation(x=at, xref=ref(xaxis), y=1, yref=f"{ref(yaxis)} domain", text=text, showarrow=False,
                               xanchor="left", yanchor="top", font=dict(color=color, size=11))
        else:
            fig.add_annotation(y=at, yref=ref(yaxis), x=1, xref=f"{ref(xaxis)} domain", text=text, showarrow=False,
                               xanchor="right", yanchor="bottom", font=dict(color=color, size=11))
    return fig


def with_prediction(fig: go.Figure, name: str, axis: str = "y", row=None, col=None) -> go.Figure:
    """Overlay the learner's committed prediction `name`: a dashed line for one number (on the
    y axis, or the x axis with axis="x"), diamonds at each setting for a mapping. Nothing if none.
    On a log axis, set the axis type first (see reference_line)."""
    value = prediction(name).value
    if value is None:
        return fig
    if isinstance(value, dict):
        where = {} if row is None else {"row": row, "col": col}
        fig.add_scatter(x=list(value), y=list(value.values()), mode="markers", name="your prediction",
                        marker=dict(symbol="diamond", size=12, color=PREDICTION_COLOR), **where)
        return fig
    return reference_line(fig, axis, value, "your prediction", PREDICTION_COLOR, row=row, col=col)


def request_layers(trace) -> go.Figure:
    """Stacked bars: where one request's milliseconds went, cold cache vs warm cache."""
    fig = go.Figure()
    names = {"cache": "Redis", "db": "PostgreSQL (read pool)", "queue": "waiting for a slot",
             "app": "app code", "outside_app_ms": "nginx + network + client"}
    for column, label in names.items():
        if column in trace:
            fig.add_bar(y=trace.index, x=trace[column], name=label, orientation="h",
                        marker_color=LAYER_COLORS[column])
    fig.update_layout(barmode="stack", xaxis_title="milliseconds")
    return _style(fig, "One request, layer by layer (from its Server-Timing header)", 300)


def knee(curve, capacity_rps: float | None = None, predicted: str | None = None) -> go.Figure:
    """Served rate and p99 against offered load, per arrival process, with queueing theory's p99."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("served vs offered (req/s)", "p99 latency (ms, log scale)"))
    colors = {"poisson": "#1f77b4", "uniform": "#2ca02c"}
    for kind in curve.index.get_level_values("arrivals").unique():
        part = curve.xs(kind, level="arrivals")
        x = list(part.index)
        if kind == "poisson":
            fig.add_scatter(x=x, y=x, name="offered", line=dict(dash="dot", color="#999"), row=1, col=1)
        fig.add_scatter(x=x, y=part["served_rps"], name=f"served ({kind})", mode="lines+markers",
                        line=dict(color=colors.get(kind)), row=1, col=1)
        fig.add_scatter(x=x, y=part["p99_ms"], name=f"p99 measured, {kind} arrivals", mode="lines+markers",
                        line=dict(color=colors.get(kind)), row=1, col=2)
        if kind == "poisson":
            fig.add_scatter(x=x, y=part["model_p99_ms"], name="p99 queueing theory (M/D/c), same arrivals",
                            mode="lines", line=dict(dash="dash", color=colors["poisson"]), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="offered load (req/s)", row=1, col=col)
        if capacity_rps:
            fig.add_vline(x=capacity_rps, line_dash="dash", line_color="#d62728", row=1, col=col)
        if predicted:
            with_prediction(fig, predicted, axis="x", row=1, col=col)
    return _style(fig, "The knee: random arrivals queue long before capacity (red dashes)")


def predicted_vs_measured(table, x_title: str, title: str, predicted: str | None = None) -> go.Figure:
    """Bars per setting: the model's figure, the measurement, and (diamonds) the learner's prediction."""
    fig = go.Figure()
    x = [str(v) for v in table.index]
    if "predicted_rps" in table and table["predicted_rps"].notna().any():
        fig.add_bar(x=x, y=table["predicted_rps"], name="predicted (Little's law)", marker_color="#c7c7c7")
    if "ceiling_rps" in table:
        fig.add_bar(x=x, y=table["ceiling_rps"], name="quota ceiling", marker_color="#c7c7c7")
    fig.add_bar(x=x, y=table["throughput_rps"], name="measured", marker_color="#1f77b4")
    if predicted:
        with_prediction(fig, predicted)
    fig.update_layout(barmode="group", xaxis_title=x_title, yaxis_title="requests per second")
    return _style(fig, title)


def percentile_curves(table) -> go.Figure:
    """Latency at each percentile, one line per measuring method."""
    fig = go.Figure()
    columns = [c for c in table.columns if c.startswith("p") and c.endswith("_ms")]
    labels = [c[1:-3] for c in columns]
    for mode, row in table.iterrows():
        fig.add_scatter(x=labels, y=[row[c] for c in columns], mode="lines+markers", name=f"{mode} loop")
    fig.update_layout(xaxis_title="percentile", yaxis_title="latency (ms, log)", yaxis_type="log")
    return _style(fig, "The same 1 s stall, measured two ways")


def outage_timeline(frames: dict) -> go.Figure:
    """Per interval: requests answered OK vs failed, one row of plots per scenario."""
    fig = make_subplots(rows=len(frames), cols=1, shared_xaxes=True, subplot_titles=list(frames))
    for i, (label, frame) in enumerate(frames.items(), start=1):
        errors = frame[[c for c in frame.columns if c.startswith("err_")]].sum(axis=1)
        ok = frame["completed"] - errors
        # A fixed width: the last, partial interval sits close to the one before it, and plotly
        # would otherwise size every bar by that smallest gap.
        width = 0.8 * float(frame["interval_s"].median()) if "interval_s" in frame else 0.4
        fig.add_bar(x=frame.index, y=ok, name="answered", marker_color="#2ca02c", showlegend=i == 1,
                    width=width, row=i, col=1)
        fig.add_bar(x=frame.index, y=errors, name="failed", marker_color="#d62728", showlegend=i == 1,
                    width=width, row=i, col=1)
        fig.add_vline(x=frame.attrs["total"]["killed_at_s"], line_dash="dash", row=i, col=1)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="seconds into the run (dashed: app-1 killed)", row=len(frames), col=1)
    return _style(fig, "Killing a replica under load", 200 + 180 * len(frames))
