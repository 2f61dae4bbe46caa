"""Live dashboards for the running stack: ipywidgets controls, plotly panels.

    from stack import live
    dash = live.dashboard(stack, controls=["replicas", "strategy", "weights"],
                          panels=["throughput", "share", "cache"], load=spec)
    dash                      # displays itself
    await dash.run(30)        # or dash.start() / dash.stop()
    dash.reaction_times()     # per control change: apply time, time until plotted
"""
from .controls import CONTROLS, Control
from .dashboard import ChangeRecord, Dashboard, Run, dashboard
from .loadfeed import LoadInterval, run_load
from .panels import PANELS, PanelSpec, PanelView, Series

__all__ = ["dashboard", "Dashboard", "ChangeRecord", "Run", "CONTROLS", "Control", "PANELS", "PanelSpec",
           "PanelView", "Series", "LoadInterval", "run_load"]
