"""Controls: widgets bound to one field of the topology each.

A control knows how to show the applied value (`sync`), what `stack.apply`
keywords a new value means (`changes`), how to label the change on the
plots, and which sample first reflects it (`reflected_in`). It does not
apply anything itself: it calls `on_change(control, value)` and the
dashboard does the rest, so every control follows the same error path.
"""
from __future__ import annotations

import html
from typing import Callable

import ipywidgets as widgets

from ..topology import STRATEGIES, Topology

OnChange = Callable[["Control", object], None]


class Control:
    name = ""
    field = ""          # the Topology field stack.apply() is given
    label = ""

    def __init__(self, topology: Topology, on_change: OnChange):
        self.on_change = on_change
        self._quiet = True          # building sets values: not a user's change
        self.error = widgets.HTML(value="", layout=widgets.Layout(min_width="0", flex="1 1 auto"))
        self.input = self.build(topology)
        self._quiet = False
        self.widget = widgets.HBox([self.input, self.error], layout=widgets.Layout(align_items="center"))

    # -- to override -----------------------------------------------------------
    def build(self, topology: Topology) -> widgets.Widget:
        raise NotImplementedError

    def read(self, topology: Topology):
        section, _, leaf = self.field.partition(".")
        return getattr(getattr(topology, section), leaf)

    def changes(self, value) -> dict:
        return {self.field: value}

    def describe(self, value) -> str:
        return f"{self.label} → {value}"

    def reflected_in(self, sample, value, applied_at: float) -> bool:
        """Whether `sample` shows the change: by default, when most of its interval
        ran with the new setting in place."""
        return sample.t - sample.interval_s / 2 >= applied_at

    # -- shared ----------------------------------------------------------------
    @property
    def value(self):
        return self.input.value

    @value.setter
    def value(self, new):
        """Move the control as a user would (applies through the dashboard)."""
        self.input.value = new

    def _changed(self, change) -> None:
        if not self._quiet:
            self.on_change(self, change["new"])

    def sync(self, topology: Topology) -> None:
        """Show the applied value without treating it as a change."""
        self._quiet = True
        try:
            self.input.value = self.read(topology)
        finally:
            self._quiet = False

    def show_error(self, text: str) -> None:
        self.error.value = f'<span style="color:#c00000">{html.escape(text)}</span>'

    def clear_error(self) -> None:
        self.error.value = ""


DESCRIPTION_WIDTH = "180px"     # the longest label, "replica apply delay (ms)", whole


def _slider(cls, description: str, **kw):
    return cls(description=description, continuous_update=False,   # apply on release, not per pixel
               style={"description_width": DESCRIPTION_WIDTH}, layout=widgets.Layout(width="450px"), **kw)


class ReplicasControl(Control):
    name, field, label = "replicas", "app.replicas", "replicas"

    def build(self, topology):
        w = _slider(widgets.IntSlider, "app replicas", min=1, max=8, value=topology.app.replicas)
        w.observe(self._changed, "value")
        return w

    def reflected_in(self, sample, value, applied_at):
        # Exactly replicas 1..value carry traffic, and the sample is mostly after the change.
        serving = {name for name, r in sample.replicas.items() if r.rps > 0}
        return super().reflected_in(sample, value, applied_at) and \
            serving == {f"app-{i}" for i in range(1, value + 1)}


class StrategyControl(Control):
    name, field, label = "strategy", "balancer.strategy", "strategy"

    def build(self, topology):
        w = widgets.Dropdown(description="balancer strategy", options=list(STRATEGIES),
                             value=topology.balancer.strategy, style={"description_width": DESCRIPTION_WIDTH},
                             layout=widgets.Layout(width="420px"))
        w.observe(self._changed, "value")
        return w


class IntControl(Control):
    """An integer field as a slider (or a free text box, where any typed value is possible)."""

    def __init__(self, topology, on_change, name, field, label, description, text=False, **slider):
        self.name, self.field, self.label = name, field, label
        self._description, self._text, self._slider = description, text, slider
        super().__init__(topology, on_change)

    def build(self, topology):
        if self._text:
            w = widgets.IntText(description=self._description, value=self.read(topology),
                                style={"description_width": DESCRIPTION_WIDTH}, layout=widgets.Layout(width="300px"))
        else:
            w = _slider(widgets.IntSlider, self._description, value=self.read(topology), **self._slider)
        w.observe(self._changed, "value")
        return w


class PoolControl(IntControl):
    """One of the app's pool sizes (per replica). Shown on the plots once every replica reports
    the new maximum for that pool in its /metrics (the config push is in force)."""

    def __init__(self, topology, on_change, name, field, label, description, pool: str, **slider):
        self.pool = pool
        super().__init__(topology, on_change, name, field, label, description, **slider)

    def reflected_in(self, sample, value, applied_at):
        sizes = [r.pools.get(self.pool, {}).get("max_size") for r in sample.replicas.values()]
        return super().reflected_in(sample, value, applied_at) and bool(sizes) and set(sizes) == {value}


class WeightsControl(Control):
    """One slider per replica. 0 is on the slider on purpose: nginx has no weight 0,
    and the error says so (take a replica out with `replicas` instead)."""
    name, field, label = "weights", "balancer.weights", "weights"
    MAX_WEIGHT = 10

    def build(self, topology):
        self._sliders: list[widgets.IntSlider] = []
        box = widgets.HBox(layout=widgets.Layout(align_items="center"))
        self._box = box
        self._title = widgets.Label("weights", layout=widgets.Layout(width=DESCRIPTION_WIDTH))
        self._fit(topology)
        return box

    def _fit(self, topology: Topology) -> None:
        """One slider per replica, set to the applied weights."""
        weights = self.read(topology)
        while len(self._sliders) < len(weights):
            s = widgets.IntSlider(min=0, max=self.MAX_WEIGHT, orientation="vertical", continuous_update=False,
                                  description=f"app-{len(self._sliders) + 1}",
                                  layout=widgets.Layout(height="150px", width="52px"))   # room for its label and readout
            s.observe(self._slider_moved, "value")
            self._sliders.append(s)
        del self._sliders[len(weights):]
        for slider, weight in zip(self._sliders, weights):
            slider.value = weight
        self._box.children = [self._title, *self._sliders]

    def read(self, topology):
        return tuple(topology.balancer.weight_list(topology.app.replicas))

    def _slider_moved(self, change) -> None:
        if not self._quiet:
            self.on_change(self, self.value)

    @property
    def value(self):
        return tuple(s.value for s in self._sliders)

    @value.setter
    def value(self, new):
        """Set all weights as one change; a tuple of the wrong length goes to the
        stack as given, so the stack's own check answers it."""
        new = tuple(new)
        if len(new) == len(self._sliders):
            self._quiet = True
            try:
                for slider, weight in zip(self._sliders, new):
                    slider.value = max(slider.min, min(slider.max, weight))
            finally:
                self._quiet = False
        self.on_change(self, new)

    def sync(self, topology):
        self._quiet = True
        try:
            self._fit(topology)
        finally:
            self._quiet = False

    def describe(self, value) -> str:
        return "weights → " + ":".join(map(str, value))


class KeepaliveControl(Control):
    """Upstream keepalive on (the article's 32 idle connections) or off (one connection per request)."""
    name, field, label = "keepalive", "balancer.keepalive", "keepalive"
    ON = 32

    def build(self, topology):
        w = widgets.ToggleButtons(description="upstream keepalive", options=[("off", 0), (f"{self.ON}", self.ON)],
                                  value=self._option(topology.balancer.keepalive),
                                  style={"description_width": DESCRIPTION_WIDTH, "button_width": "60px"})
        w.observe(self._changed, "value")
        return w

    def _option(self, keepalive: int) -> int:
        return self.ON if keepalive else 0

    def read(self, topology):
        return self._option(topology.balancer.keepalive)

    def describe(self, value) -> str:
        return f"keepalive → {value or 'off'}"


def _int(name, field, label, description, **kw):
    return lambda topology, on_change: IntControl(topology, on_change, name, field, label, description, **kw)


CONTROLS: dict[str, Callable[[Topology, OnChange], Control]] = {
    "replicas": ReplicasControl,
    "strategy": StrategyControl,
    "weights": WeightsControl,
    "keepalive": KeepaliveControl,
    "ttl": _int("ttl", "cache.ttl_s", "TTL", "cache TTL (s)", text=True),
    "replica_delay": _int("replica_delay", "postgres.replica_delay_ms", "replica delay",
                          "replica apply delay (ms)", min=0, max=5000, step=100),
    "pool_size": _int("pool_size", "pgbouncer.pool_size", "PgBouncer pool", "PgBouncer pool size",
                      min=1, max=50),
    "write_pool": _int("write_pool", "app.write_pool", "write pool", "app write pool", min=1, max=50),
    "read_pool": lambda topology, on_change: PoolControl(topology, on_change, "read_pool", "app.read_pool",
                                                         "read pool", "read pool per replica", pool="read",
                                                         min=1, max=50),
    "concurrency": _int("concurrency", "app.concurrency", "concurrency", "per-replica concurrency",
                        min=1, max=64),
}
