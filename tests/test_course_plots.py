"""The lessons' plots, built from tables shaped like the experiments' (no stack needed)."""
import pandas as pd

from stack.course import plots
from stack.course.experiments import parse_server_timing


def test_server_timing_parses_every_layer():
    assert parse_server_timing("cache;dur=0.3, db;dur=1.25, app;dur=0.1, total;dur=1.65") == \
        {"cache": 0.3, "db": 1.25, "app": 0.1, "total": 1.65}


def test_outage_timeline_bars_keep_their_width_despite_a_short_last_interval():
    frame = pd.DataFrame({"t_s": [0.5, 1.0, 1.5, 1.55], "interval_s": [0.5, 0.5, 0.5, 0.05],
                          "completed": [100, 100, 100, 5], "err_5xx": [0, 40, 100, 5]}).set_index("t_s")
    frame.attrs["total"] = {"killed_at_s": 0.8}
    fig = plots.outage_timeline({"1 replica": frame})
    answered, failed = fig.data
    assert list(failed.y) == [0, 40, 100, 5] and list(answered.y) == [100, 60, 0, 0]
    assert answered.width == 0.4


def test_knee_marks_capacity_on_both_panels():
    curve = pd.DataFrame({"offered_rps": [50, 300], "served_rps": [50, 200], "throughput_rps": [50, 200],
                          "p50_ms": [21, 500], "p99_ms": [23, 900]}).set_index("offered_rps")
    fig = plots.knee(curve, capacity_rps=200)
    assert [t.name for t in fig.data] == ["offered", "served", "p50", "p99"]
    assert len(fig.layout.shapes) == 2


def test_percentile_curves_one_line_per_mode():
    table = pd.DataFrame({"mode": ["open", "closed"], "requests": [400, 1000], "p50_ms": [6, 5],
                          "p99_ms": [950, 9], "max_ms": [1000, 1000]}).set_index("mode")
    fig = plots.percentile_curves(table)
    assert [t.name for t in fig.data] == ["open loop", "closed loop"]
    assert list(fig.data[0].x) == ["50", "99"]
