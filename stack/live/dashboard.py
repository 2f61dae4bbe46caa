"""A live dashboard: controls bound to the stack, plots fed by the sampler and the load.

    dash = live.dashboard(stack, controls=["replicas", "strategy"], panels=["throughput", "share"],
                          load=LoadSpec(...))
    dash                       # shows itself
    await dash.run(30)         # or dash.start() ... dash.stop()

Everything runs as asyncio tasks on the notebook's own loop: the sampler, the
load, and the redraws. A control change runs `stack.apply` in a thread, so
the plots keep moving while nginx reloads or a replica starts. A change the
stack refuses shows its message in red beside the control, and the control
goes back to what is applied (the stack checks everything before changing
anything, so it is as it was).
"""
from __future__ import annotations

import asyncio
import bisect
import html
import time
from dataclasses import dataclass, field

import ipywidgets as widgets

from ..errors import StackError
from ..sample import Sample, Sampler
from .controls import CONTROLS, Control
from .loadfeed import LoadInterval, run_load
from .panels import PANELS, PanelView

REDRAW_MIN_S = 0.1      # at most ten redraws a second, whatever arrives
REDRAW_MAX_S = 0.5      # and at least two, so the window scrolls even when idle


@dataclass
class ChangeRecord:
    """One control change and how long the dashboard took to show it."""
    control: str
    value: object
    requested_at: float                 # time.time() when the control moved
    applied_at: float | None = None     # stack.apply returned
    sample_at: float | None = None      # end of the first sample reflecting it
    plotted_at: float | None = None     # that sample was drawn
    error: str | None = None

    @property
    def apply_s(self) -> float | None:
        return None if self.applied_at is None else self.applied_at - self.requested_at

    @property
    def reaction_s(self) -> float | None:
        """Control moved -> first sample reflecting it on the plots."""
        return None if self.plotted_at is None else self.plotted_at - self.requested_at


class ReactionTimes(list):
    """The dashboard's changes as dicts (control, value, apply_s, reaction_s, error), printed as one
    readable line per change instead of a list of dicts with 16-digit floats."""

    def __str__(self) -> str:
        if not self:
            return "no control was changed"
        lines = []
        for c in self:
            what = f"{c['control']} -> {c['value']!r}: "
            if c["error"]:
                lines.append(what + f"refused ({c['error']})")
            elif c["reaction_s"] is None:
                lines.append(what + ("applying" if c["apply_s"] is None else f"applied in {c['apply_s']:.2f} s, "
                                     "not on the plots yet"))
            else:
                lines.append(what + f"applied in {c['apply_s']:.2f} s, on the plots {c['reaction_s']:.2f} s "
                                    "after the move")
        # One change fits after print("reaction:", ...); several go one per indented line below it.
        return lines[0] if len(lines) == 1 else "".join("\n  " + line for line in lines)

    def __repr__(self) -> str:          # a cell's last value: no blank first line
        return str(self).lstrip("\n")


@dataclass
class Run:
    label: str
    started_at: float
    samples: list[Sample] = field(default_factory=list)
    intervals: list[LoadInterval] = field(default_factory=list)
    markers: list[tuple[float, str]] = field(default_factory=list)   # (seconds into the run, text)
    ended_at: float | None = None

    def window(self, low_s: float, high_s: float) -> "Run":
        """The same run holding only what came between `low_s` and `high_s` seconds into it."""
        def cut(items):
            key = lambda item: item.t   # noqa: E731 - samples and load intervals both carry .t
            return items[bisect.bisect_left(items, self.started_at + low_s, key=key):
                         bisect.bisect_right(items, self.started_at + high_s, key=key)]
        return Run(self.label, self.started_at, cut(self.samples), cut(self.intervals), self.markers,
                   self.ended_at)


class Dashboard:
    def __init__(self, stack, controls=(), panels=("throughput", "share"), load=None,
                 window_s: float = 30.0, interval_s: float = 0.5, overlay: int = 1):
        unknown = [c for c in controls if c not in CONTROLS] + [p for p in panels if p not in PANELS]
        if unknown:
            raise ValueError(f"unknown control or panel {unknown[0]!r}: controls are "
                             f"{', '.join(CONTROLS)}; panels are {', '.join(PANELS)}")
        self.stack, self.load, self.window_s, self.overlay = stack, load, window_s, overlay
        topology = stack.applied()
        if topology is None:
            raise StackError("the stack is not running: run stack.up() first")
        self.controls: dict[str, Control] = {name: CONTROLS[name](topology, self._control_moved)
                                             for name in controls}
        self.panels: dict[str, PanelView] = {name: PanelView(name, PANELS[name]) for name in panels}
        self.sampler = Sampler(stack, interval_s=interval_s, on_sample=self._sample_arrived)
        self.runs: list[Run] = []
        self.changes: list[ChangeRecord] = []
        self._pending: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._apply_lock: asyncio.Lock | None = None
        self._dirty: asyncio.Event | None = None
        self._unplotted: list[Sample] = []
        self.status = widgets.HTML()
        self.problem: str | None = None        # why a background task stopped, if one did
        self.widget = self._layout()

    # -- display ------------------------------------------------------------------
    def _layout(self) -> widgets.Widget:
        figures = [p.figure for p in self.panels.values()]
        grid = widgets.GridBox(figures, layout=widgets.Layout(
            grid_template_columns="repeat(2, minmax(0, 1fr))" if len(figures) > 1 else "minmax(0, 1fr)",
            width="100%"))
        controls = widgets.VBox([c.widget for c in self.controls.values()])
        return widgets.VBox([controls, self.status, grid])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def run_now(self) -> Run | None:
        """The run in progress (None between runs)."""
        return self.runs[-1] if self.runs and self.runs[-1].ended_at is None else None

    # -- running ------------------------------------------------------------------
    def start(self, label: str | None = None) -> None:
        """Start a new run: sampling, the load (if any) and redraws, in the background.
        The previous run stays on the plots, dimmed, for comparison."""
        if self.run_now is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise StackError("start() needs a running event loop: call it in a notebook cell, "
                             "or use `await dash.run(seconds)` inside asyncio.run(...)") from None
        self._apply_lock = self._apply_lock or asyncio.Lock()
        self._dirty = asyncio.Event()
        topology = self.stack.applied()
        for control in self.controls.values():      # the stack may have been changed elsewhere
            control.sync(topology)
        label = label or f"{topology.balancer.strategy}, {topology.app.replicas} replicas"
        used = {r.label for r in self.runs}
        if label in used:                            # overlaid traces are named after their run
            label = next(f"{label} #{n}" for n in range(2, len(used) + 3) if f"{label} #{n}" not in used)
        self.runs.append(Run(label=label, started_at=time.time()))
        stopping, self._tasks = self._tasks, []
        self._start_task(self._redraw_loop(), "redraw")
        self._start_task(self._start_sampler(stopping), "sampler")
        if self.load is not None:
            self._start_task(run_load(self.load, self._interval_arrived), "load")

    def _start_task(self, coro, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"scalelab-{what}")
        task.add_done_callback(lambda t: self._task_ended(t, what))
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task, what: str) -> None:
        # A failing load or sampler must say so, not just leave the plots still.
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.problem = f"{what} stopped: {type(exc).__name__}: {exc}"
            self.status.value = f'<span style="color:#c00000">{html.escape(self.problem)}</span>'

    async def _start_sampler(self, stopping: list) -> None:
        await asyncio.gather(*stopping, return_exceptions=True)   # the last run's sampler, closing
        self.sampler.start()

    def stop(self) -> None:
        """End the run: stop sampling, the load and redraws (the plots stay)."""
        run = self.run_now
        if run is None:
            return
        run.ended_at = time.time()
        for task in self._tasks:
            task.cancel()
        self._tasks.append(asyncio.ensure_future(self.sampler.stop()))
        self._redraw()

    async def run(self, seconds: float, label: str | None = None) -> Run:
        """Run for `seconds`, then stop; returns the finished run."""
        self.start(label)
        run = self.run_now
        try:
            await asyncio.sleep(seconds)
        finally:
            self.stop()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return run

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until every control change in progress has been applied or refused."""
        if self._pending:
            await asyncio.wait_for(asyncio.gather(*self._pending, return_exceptions=True), timeout)

    # -- data in ------------------------------------------------------------------
    def _sample_arrived(self, sample: Sample) -> None:
        run = self.run_now
        if run is not None:
            run.samples.append(sample)
            self._unplotted.append(sample)
            self._dirty.set()

    def _interval_arrived(self, interval: LoadInterval) -> None:
        run = self.run_now
        if run is not None:
            run.intervals.append(interval)
            self._dirty.set()

    # -- drawing ------------------------------------------------------------------
    async def _redraw_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), REDRAW_MAX_S)
            except asyncio.TimeoutError:
                pass
            self._dirty.clear()
            self._redraw()
            await asyncio.sleep(REDRAW_MIN_S)

    def _redraw(self) -> None:
        if not self.runs:
            return
        current = self.runs[-1]
        now = (current.ended_at or time.time()) - current.started_at
        x_range = (max(0.0, now - self.window_s), max(self.window_s, now))
        # Only what the window shows (plus a second) is turned into series.
        low, high = x_range[0] - 1, x_range[1] + 1
        before = [r.window(low, high) for r in self.runs[:-1][-self.overlay:]] if self.overlay else []
        for panel in self.panels.values():
            panel.draw(current.window(low, high), before, x_range, current.markers)
        drawn, self._unplotted = self._unplotted, []
        self._note_reflected(drawn, time.time())
        self._show_status(current, now)

    def _note_reflected(self, drawn: list[Sample], plotted_at: float) -> None:
        for record in self.changes:
            if record.plotted_at is not None or record.applied_at is None or record.error:
                continue
            control = self.controls[record.control]
            for sample in drawn:
                if control.reflected_in(sample, record.value, record.applied_at):
                    record.sample_at, record.plotted_at = sample.t, plotted_at
                    break

    def _show_status(self, run: Run, now: float) -> None:
        if self.problem:
            return          # keep the problem in view
        parts = [f"<b>{html.escape(run.label)}</b> · {now:5.1f} s"]
        if run.ended_at:
            parts.append("stopped")
        done = [c for c in self.changes if c.reaction_s is not None]
        if done:
            last = done[-1]
            parts.append(f"last change {html.escape(self.controls[last.control].describe(last.value))}: "
                         f"applied in {last.apply_s:.2f} s, on the plots {last.reaction_s:.2f} s after the move")
        if run.samples and run.samples[-1].problems:       # e.g. Redis down: say so beside the plots
            parts.append('<span style="color:#b35900">not answering: '
                         f'{html.escape("; ".join(run.samples[-1].problems))}</span>')
        self.status.value = " · ".join(parts)

    # -- control changes ----------------------------------------------------------
    def _control_moved(self, control: Control, value) -> None:
        record = ChangeRecord(control.name, value, requested_at=time.time())
        self.changes.append(record)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            # No event loop here (a plain script): apply right away, blocking.
            asyncio.run(self._apply(control, record))
            return
        task = loop.create_task(self._apply(control, record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _apply(self, control: Control, record: ChangeRecord) -> None:
        self._apply_lock = self._apply_lock or asyncio.Lock()
        async with self._apply_lock:       # one change at a time, in the order they were made
            try:
                changes = control.changes(record.value)
                await asyncio.to_thread(self.stack.apply, **changes)
            except Exception as exc:   # noqa: BLE001 - TopologyError, StackError or worse: show it, keep going
                record.error = str(exc) or type(exc).__name__
                control.show_error(record.error)
            else:
                record.applied_at = time.time()
                control.clear_error()
                run = self.run_now
                if run is not None:
                    run.markers.append((record.requested_at - run.started_at, control.describe(record.value)))
            # Every control shows what is applied now: the old value after an error,
            # and e.g. one weight slider per replica after a scale change.
            topology = await asyncio.to_thread(self.stack.applied)
            for c in self.controls.values():
                c.sync(topology)
            if self._dirty is not None:
                self._dirty.set()

    def reaction_times(self) -> ReactionTimes:
        """Per change: what, how long stack.apply took, how long until the plots showed it."""
        return ReactionTimes({"control": c.control, "value": c.value, "apply_s": c.apply_s,
                              "reaction_s": c.reaction_s, "error": c.error} for c in self.changes)


def dashboard(stack=None, controls=("replicas", "strategy"), panels=("throughput", "share"), load=None,
              window_s: float = 30.0, interval_s: float = 0.5, overlay: int = 1) -> Dashboard:
    """Build a dashboard in one call; it displays itself when it is a cell's last value."""
    if stack is None:
        from .. import get_stack
        stack = get_stack()
    return Dashboard(stack, controls=list(controls), panels=list(panels), load=load,
                     window_s=window_s, interval_s=interval_s, overlay=overlay)
