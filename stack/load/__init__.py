"""stack.load: an honest HTTP load generator for the course.

    from stack.load import LoadSpec, RequestMix, run_load
    result = run_load(LoadSpec(url="http://127.0.0.1:18080", mode="open", rate=500, duration_s=5,
                               mix=RequestMix.users(read_ratio=0.9, keys="zipf")))
    result.latency_ms(); result.to_dataframe(); result.intervals_dataframe()

Open loop (`mode="open"`) sends on a fixed schedule and measures latency from
each request's intended send time, so a stalled server shows up in the
percentiles instead of silently slowing the generator down (coordinated
omission). Closed loop (`mode="closed"`) is what wrk does: C connections,
the next request when the previous one answers.

In a notebook (a loop is already running), stream snapshots while it runs:

    run = start_load(spec)
    async for snapshot in run:          # one IntervalSnapshot per spec.interval_s
        update_plot(snapshot)
    result = await run

or `await run_load_async(spec, on_interval=update_plot)`. `run_load` blocks
(in a notebook it runs in a helper thread).

Modules: spec (LoadSpec), mix and keys (what is sent), schedule (open-loop
pacing), runner and closedloop (the engines), fastclient and clients (HTTP),
histogram and recorder (measuring), result and bottleneck (reporting),
testserver (a misbehaving server for tests and lessons), cli.
"""
from .errors import LoadSpecError
from .histogram import LatencyHistogram
from .keys import Keys
from .mix import Request, RequestMix
from .result import ERROR_CLASSES, GroupStats, IntervalSnapshot, LoadResult
from .runner import LoadRun
from .api import run_load, run_load_async, start_load
from .spec import LoadSpec

__all__ = ["LoadSpec", "LoadSpecError", "Request", "RequestMix", "Keys", "LoadResult",
           "IntervalSnapshot", "GroupStats", "LatencyHistogram", "LoadRun", "ERROR_CLASSES",
           "run_load", "run_load_async", "start_load"]
