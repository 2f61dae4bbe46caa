"""The prediction store: predict before an experiment, reveal the gap after it."""
import time

import pytest

from stack.course import predictions
from stack.course.predictions import PredictionError, experiment_started, gap, prediction, predict, record


@pytest.fixture(autouse=True)
def own_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_PROGRESS", str(tmp_path / "progress.json"))
    monkeypatch.setattr(predictions, "_last_experiment_started", None)


def test_a_prediction_is_stored_with_its_time_and_survives_a_new_kernel():
    before = time.time()
    predict("capacity", 180, unit="req/s")
    stored = prediction("capacity")          # read back from the progress file, as a new kernel would
    assert stored.value == 180.0 and stored.unit == "req/s" and before <= stored.at <= time.time()


def test_the_placeholder_records_nothing_and_forgets_an_old_prediction():
    record("capacity", 180)
    assert "No prediction recorded" in repr(record("capacity", ...))
    assert prediction("capacity").value is None


def test_a_mapping_predicts_one_number_per_setting():
    record("by_replicas", {1: 200, 2: 400})
    g = gap("by_replicas", {1: 190.0, 2: 380.0, 4: 700.0})
    assert g.relative_errors() == pytest.approx({"1": -0.05, "2": -0.05})
    assert "4: measured 700 (no prediction was recorded)" in repr(g)


def test_the_gap_says_how_far_off_and_in_which_direction():
    record("p99", 40, unit="ms")
    assert "you predicted 40, the stack measured 60 ms: 50% more than predicted" in repr(gap("p99", 60))
    assert "25% less than predicted" in repr(gap("p99", 30))


def test_a_prediction_changed_after_the_experiment_started_is_flagged():
    record("p99", 40)
    experiment_started()
    assert "changed after the experiment" not in repr(gap("p99", 50))
    time.sleep(0.01)
    record("p99", 50)                         # "predicting" after seeing the measurement
    assert "changed after the experiment" in repr(gap("p99", 50))


@pytest.mark.parametrize("value", ["fast", True, float("nan"), {}, {1: "x"}])
def test_a_prediction_must_be_a_number_or_numbers(value):
    with pytest.raises(PredictionError, match="is not allowed: a number, or a dict of numbers"):
        record("x", value)


def test_a_check_quotes_the_committed_number_and_nothing_when_none_was_committed():
    assert predictions.as_predicted("p99", " (you predicted {:.0f} ms)") == ""
    record("p99", 40, unit="ms")
    assert predictions.as_predicted("p99", " (you predicted {:.0f} ms)") == " (you predicted 40 ms)"
    record("p99", ...)                       # a placeholder again: the old number is not quoted
    assert predictions.as_predicted("p99", " (you predicted {:.0f} ms)") == ""
