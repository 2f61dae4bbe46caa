"""Predict, then measure: the learner commits a number before an experiment runs, and the
gap between the two is shown after it.

    predict("one_replica_rps", 150)            # before the experiment cell; stored with the time
    curve = ex.latency_vs_offered_load(...)     # the experiment always runs
    reveal("one_replica_rps", 194.3)            # what you said, what the stack did, the gap
    gap("one_replica_rps", 194.3)               # the same, as data (Gap.relative_errors())

A prediction can be one number or a mapping ({1: 200, 2: 400}: one number per
setting). It is kept with its timestamp in the learner's progress file, so a
restarted kernel still has it, and `reveal` says so plainly when a prediction
was changed after the measurement it is compared with.
"""
from __future__ import annotations

import contextlib
import functools
import html
import math
import time
from dataclasses import dataclass
from numbers import Real

from .. import quiet
from . import progress_store

_last_experiment_started: float | None = None   # set by experiments as they begin (see `experiment_started`)


class PredictionError(ValueError):
    pass


def experiment_started() -> float:
    """Experiments call this as they begin; a prediction stored later is flagged as made after it."""
    global _last_experiment_started
    _last_experiment_started = time.time()
    return _last_experiment_started


def experiment(fn=None, *, each_run: bool = False):
    """Decorator for a course experiment: marks when its measurement began, so reveal() can flag a
    prediction stored after that.

    When test workers share the machine (stack/quiet.py), the experiment is one measurement window
    with the machine to itself. `each_run=True` is for sweeps whose only measurements are load runs
    (each already a window of its own): the steps between them (scaling, reloads) share the machine.
    """
    if fn is None:
        return functools.partial(experiment, each_run=each_run)

    @functools.wraps(fn)
    def run_experiment(*args, **kwargs):
        experiment_started()
        with contextlib.nullcontext() if each_run else quiet.window():
            return fn(*args, **kwargs)
    return run_experiment


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _normalise(name: str, value):
    if _is_number(value):
        return float(value)
    if isinstance(value, dict) and value and all(_is_number(v) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}
    raise PredictionError(f"prediction {name!r}={value!r} is not allowed: a number, or a dict of numbers "
                          f"such as {{1: 200, 2: 400}} (one per setting)")


@dataclass(frozen=True)
class Prediction:
    name: str
    value: object          # float, or dict str -> float; None when not made
    unit: str
    at: float | None

    def __repr__(self) -> str:
        if self.value is None:
            return (f"No prediction recorded for {self.name!r}: put your number in place of ... and run "
                    f"this cell before the experiment. (The experiment runs either way.)")
        return f"Prediction recorded: {self.name} = {_fmt(self.value, self.unit)} at {time.strftime('%H:%M:%S', time.localtime(self.at))}"


def show(obj) -> None:
    """Display at once (rich in a notebook, text elsewhere), so several calls in one cell all show."""
    try:
        from IPython import get_ipython
        from IPython.display import display
        if get_ipython() is not None:
            display(obj)
            return
    except ImportError:
        pass
    print(repr(obj))


def record(name: str, value, unit: str = "") -> Prediction:
    """Store a prediction (or, for `...`, forget any earlier one) and return it."""
    if value is Ellipsis or value is None:
        progress_store.forget_prediction(name)
        return Prediction(name, None, unit, None)
    stored = _normalise(name, value)
    at = time.time()
    progress_store.record_prediction(name, stored, unit, at)
    return Prediction(name, stored, unit, at)


def predict(name: str, value, unit: str = "") -> None:
    """Commit a prediction before the experiment and say so. `...` (the placeholder) records none."""
    show(record(name, value, unit))


def prediction(name: str) -> Prediction:
    entry = progress_store.load().get("predictions", {}).get(name)
    if not entry:
        return Prediction(name, None, "", None)
    return Prediction(name, entry["value"], entry.get("unit", ""), entry["at"])


def as_predicted(name: str, template: str) -> str:
    """`template` filled with the number the learner committed for `name` (" (you predicted {:.0f} ms)"),
    or "" when they committed none: a check's verdict shows the gap to the guess."""
    guess = prediction(name).value
    return template.format(guess) if isinstance(guess, float) else ""


def _fmt(value, unit: str) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_num(v)}" for k, v in value.items()) + (f" ({unit})" if unit else "")
    return f"{_num(value)}{(' ' + unit) if unit else ''}"


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


@dataclass(frozen=True)
class Gap:
    """A prediction beside its measurement: per setting when the prediction is a mapping."""
    name: str
    unit: str
    rows: list              # (label, predicted or None, measured)
    made_after: bool        # the prediction was stored after the experiment began

    @property
    def predicted(self):
        return None if self.rows[0][1] is None else (
            self.rows[0][1] if len(self.rows) == 1 and self.rows[0][0] == "" else {r[0]: r[1] for r in self.rows})

    def relative_errors(self) -> dict:
        """(measured - predicted) / predicted per setting, where a prediction exists and is not zero."""
        return {label: (m - p) / p for label, p, m in self.rows if p not in (None, 0)}

    def _sentence(self, label, p, m) -> str:
        where = f"{label}: " if label else ""
        if p is None:
            return f"{where}measured {_num(m)}{self._unit} (no prediction was recorded)"
        if p == 0:
            return f"{where}you predicted 0, measured {_num(m)}{self._unit}"
        err = (m - p) / p
        word = "more" if err > 0 else "less"
        return (f"{where}you predicted {_num(p)}, the stack measured {_num(m)}{self._unit}: "
                f"{abs(err):.0%} {word} than predicted")

    @property
    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""

    def lines(self) -> list[str]:
        out = [self._sentence(*row) for row in self.rows]
        if self.made_after:
            out.append("(this prediction was changed after the experiment started: run the prediction cell "
                       "first to test yourself honestly)")
        return out

    def __repr__(self) -> str:
        return f"Prediction vs measurement, {self.name}:\n  " + "\n  ".join(self.lines())

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in self.lines())
        return (f'<div style="border-left:4px solid #0969da;padding:4px 10px;margin:4px 0">'
                f"<b>Prediction vs measurement</b> <code>{html.escape(self.name)}</code><ul>{items}</ul></div>")


def reveal(name: str, measured, unit: str | None = None) -> None:
    """Show the committed prediction `name` beside what was measured (a number, or a mapping/Series)."""
    show(gap(name, measured, unit))


def gap(name: str, measured, unit: str | None = None) -> Gap:
    """The committed prediction `name` beside what was measured, as data."""
    pred = prediction(name)
    unit = pred.unit if unit is None else unit
    made_after = bool(pred.at and _last_experiment_started and pred.at > _last_experiment_started)
    if hasattr(measured, "items"):
        values = {str(k): float(v) for k, v in measured.items()}
        predicted = pred.value if isinstance(pred.value, dict) else {}
        rows = [(label, predicted.get(label), m) for label, m in values.items()]
    else:
        p = pred.value if _is_number(pred.value) else None
        rows = [("", p, float(measured))]
    return Gap(name, unit, rows, made_after)
