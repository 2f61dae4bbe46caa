"""stack.load: an honest HTTP load generator for the course.

    from stack.load import LoadSpec, RequestMix, run_load
    result = run_load(LoadSpec(url="http://127.0.0.1:18080", mode="open", rate=500, duration_s=5,
                               mix=RequestMix.users(read_ratio=0.9, keys="zipf")))
    result.latency_ms(); result.to_dataframe(); result.intervals_dataframe()

Open loop sends on a fixed schedule and measures latency from each request's
intended send time, so a stalled server shows up in the percentiles instead
of silently slowing the generator down (coordinated omission). Closed loop
(`mode="closed"`) is what wrk does: C connections, next request on answer.
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
