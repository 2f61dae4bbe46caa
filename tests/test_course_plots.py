"""The lessons' plots, built from tables shaped like the experiments' (no stack needed)."""
import pandas as pd
import pytest

from stack.course import plots
from stack.course.predictions import predict
from stack.course.queueing import percentile, simulate_latency
from stack.course.experiments import parse_server_timing


def test_server_timing_parses_every_layer():
    assert parse_server_timing("cache;dur=0.3, db;dur=1.25, app;dur=0.1, total;dur=1.65") == \
        {"cache": 0.3, "db": 1.25, "app": 0.1, "total": 1.65}


def test_access_lines_parse_with_and_without_the_replica_that_answered():
    from stack.course.readings import parse_access_line
    old = parse_access_line('1.5 127.0.0.1 GET "/users/1" 200 127.0.0.1:9001 0.010 0.011')
    assert (old["upstream"], old["upstream_s"], old["request_s"], old["replica"]) == ("127.0.0.1:9001", 0.01, 0.011, None)
    # A retry: two upstreams tried, the last answered, and it named itself.
    retried = parse_access_line('1.5 127.0.0.1 GET "/users/1" 200 172.18.0.5:8000, 172.18.0.6:8000 0.002, 0.010 0.013 app-2')
    assert (retried["upstream"], retried["upstream_s"], retried["request_s"], retried["replica"]) == \
        ("172.18.0.6:8000", 0.01, 0.013, "app-2")
    own = parse_access_line('1.5 127.0.0.1 GET "/nope" 502 - - 0.000 -')
    assert (own["status"], own["upstream_s"], own["replica"]) == (502, None, None)
    assert parse_access_line("not a log line") is None


def test_outage_timeline_bars_keep_their_width_despite_a_short_last_interval():
    frame = pd.DataFrame({"t_s": [0.5, 1.0, 1.5, 1.55], "interval_s": [0.5, 0.5, 0.5, 0.05],
                          "completed": [100, 100, 100, 5], "err_5xx": [0, 40, 100, 5]}).set_index("t_s")
    frame.attrs["total"] = {"killed_at_s": 0.8}
    fig = plots.outage_timeline({"1 replica": frame})
    answered, failed = fig.data
    assert list(failed.y) == [0, 40, 100, 5] and list(answered.y) == [100, 60, 0, 0]
    assert answered.width == 0.4


def test_knee_marks_capacity_and_the_prediction_on_both_panels(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_PROGRESS", str(tmp_path / "progress.json"))
    rows = [(kind, rate, served, p99, model) for kind, rate, served, p99, model in
            [("poisson", 50, 50, 30, 28), ("poisson", 300, 200, 900, 880),
             ("uniform", 50, 50, 21, 20), ("uniform", 300, 200, 850, 840)]]
    curve = pd.DataFrame(rows, columns=["arrivals", "offered_rps", "served_rps", "p99_ms", "model_p99_ms"]) \
        .set_index(["arrivals", "offered_rps"])
    assert len(plots.knee(curve, capacity_rps=200).layout.shapes) == 2
    predict("capacity", 180)
    fig = plots.knee(curve, capacity_rps=200, predicted="capacity")
    assert [t.name for t in fig.data] == ["offered", "served (poisson)", "p99 measured, poisson arrivals",
                                          "p99 queueing theory (M/D/c), same arrivals",
                                          "served (uniform)", "p99 measured, uniform arrivals"]
    assert sorted(shape.x0 for shape in fig.layout.shapes) == [180, 180, 200, 200]


def test_queueing_model_replays_the_generators_schedule():
    poisson = simulate_latency(160, slots=4, service_ms=20, duration_s=3, arrivals="poisson", seed=7)
    uniform = simulate_latency(160, slots=4, service_ms=20, duration_s=3, arrivals="uniform", seed=7)
    assert len(uniform) == 480 and min(poisson) == pytest.approx(20.0)
    assert percentile(uniform, 99) == pytest.approx(20.0)         # evenly spaced arrivals below capacity never queue
    assert percentile(poisson, 99) > 40             # random ones do, at 80% load


def test_percentile_curves_one_line_per_mode():
    table = pd.DataFrame({"mode": ["open", "closed"], "requests": [400, 1000], "p50_ms": [6, 5],
                          "p99_ms": [950, 9], "max_ms": [1000, 1000]}).set_index("mode")
    fig = plots.percentile_curves(table)
    assert [t.name for t in fig.data] == ["open loop", "closed loop"]
    assert list(fig.data[0].x) == ["50", "99"]


def test_labels_of_lines_on_log_axes_sit_at_the_line(tmp_path, monkeypatch):
    """Plotly's add_vline(annotation_text=) put a label at 10**value on a log axis: a predicted pool
    of 6 stretched the axis to a million, and a prediction of 40 ms to 1e40."""
    import math

    from stack.course import pooling_plots
    monkeypatch.setenv("SCALELAB_PROGRESS", str(tmp_path / "progress.json"))
    sweep = pd.DataFrame({"read_pool": [2, 4, 8, 16], "little_per_replica": 5.0, "ok_rps": [77, 153, 197, 197],
                          "served_rps": [119, 153, 197, 197], "p99_ms": [2053, 918, 73, 61]}).set_index("read_pool")
    predict("enough_pool", 6)
    fig = pooling_plots.pool_sweep(sweep, predicted="enough_pool")
    labels = {a.text: a.x for a in fig.layout.annotations if a.text in ("Little's law", "your prediction")}
    assert labels == {"Little's law": math.log10(5.0), "your prediction": math.log10(6)}, labels
    assert all(a.text != "new text" for a in fig.layout.annotations)
    assert sorted(s.x0 for s in fig.layout.shapes) == [5.0, 5.0, 6, 6]      # shapes take data values
    costs = pd.DataFrame({"queries_per_s": [5000.0, 300.0], "p50_ms": [0.2, 3.0]}, index=["pool", "new"])
    predict("pool_queries_per_s", 4000)
    fig = pooling_plots.connection_costs(costs, predicted="pool_queries_per_s")
    [label] = [a for a in fig.layout.annotations if a.text == "your prediction"]
    assert label.y == math.log10(4000) and label.yref == "y"


def test_a_log_axis_is_labelled_1_2_5_within_the_data():
    from stack.course import pooling_plots
    from stack.course.plots import log_ticks
    assert log_ticks(61, 2053) == [50, 100, 200, 500, 1000, 2000, 5000]
    assert log_ticks(0.2, 3.0) == [0.1, 0.2, 0.5, 1, 2, 5]
    sweep = pd.DataFrame({"read_pool": [2, 4, 8, 16], "little_per_replica": 5.0, "ok_rps": [77, 153, 197, 197],
                          "served_rps": [119, 153, 197, 197], "p99_ms": [2053, 918, 73, 61]}).set_index("read_pool")
    fig = pooling_plots.pool_sweep(sweep)
    assert list(fig.layout.yaxis2.ticktext) == ["50", "100", "200", "500", "1,000", "2,000", "5,000"]
    assert list(fig.layout.xaxis.tickvals) == [2, 4, 8, 16]          # ticks the plot chose stay


def test_a_busy_generator_is_reported_in_one_short_actionable_sentence():
    from stack.course.experiments import generator_fell_behind
    note = ("The generator could not keep its schedule: p99 send lag was 7.2 ms (limit 5 ms); it, or the "
            "machine it shares, was too busy.")
    frame = pd.DataFrame([("poisson", 50, True, note, "long text " * 50), ("poisson", 100, False, "", ""),
                          ("uniform", 180, True, "The generator used 97% of a CPU core", "long text " * 50)],
                         columns=["arrivals", "offered_rps", "generator_bottleneck", "generator_note", "warnings"]
                         ).set_index(["arrivals", "offered_rps"])
    said = generator_fell_behind(frame)
    assert said.startswith("the load generator itself limited 2 of 3 runs (('poisson', 50), ('uniform', 180)). "
                           "In the first: The generator could not keep its schedule: p99 send lag was 7.2 ms")
    assert "run the experiment cell again" in said and "long text" not in said
    assert generator_fell_behind(frame.iloc[[1]]) == "the load generator kept its schedule in every run"
