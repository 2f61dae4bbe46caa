"""Did the generator keep up? Plain-English warnings for a finished run.

A load test is only as good as its generator: if it fell behind its schedule
or ran out of CPU, the numbers describe the generator, not the server.
"""
from __future__ import annotations

from .result import LoadResult
from .spec import LoadSpec

RATE_SHORTFALL = 0.9        # achieved below 90 % of offered counts as "well below"
LAG_SHARE_OF_P50 = 0.05     # a send lag under 5 % of the median latency measured does not matter


def judge(spec: LoadSpec, result: LoadResult, stopped: bool = False) -> tuple[bool, list[str]]:
    """(generator_bottleneck, warnings) for `result`."""
    bottleneck, warnings = False, []

    if result.cpu >= spec.cpu_limit:
        bottleneck = True
        warnings.append(
            f"The generator used {result.cpu:.0%} of a CPU core (limit {spec.cpu_limit:.0%}): "
            "it may be what limits these numbers, not the server. Lower the rate or connections, "
            "or run the generator where it has a core to itself.")

    if spec.mode == "open" and not stopped:
        lag = result.send_lag.percentile_ms(99.0) if result.send_lag else None
        # A send late by less than half the mean gap between sends neither bunches nor reorders the
        # schedule: at low rates (50 req/s: 20 ms apart) one stall of a few ms is not a burstier load.
        # Nor does a lag that is small beside what the requests waited anyway: past capacity (a
        # median of hundreds of ms in the server's queue) 10 ms late changes nothing measured. A
        # generator late on most sends raises that median itself, so it must stay a twentieth of it.
        p50 = result.latency.percentile_ms(50.0) if result.latency.count else 0.0
        limit = max(spec.max_send_lag_ms, 500.0 / spec.rate if spec.rate else 0.0, LAG_SHARE_OF_P50 * p50)
        if lag is not None and lag > limit:
            bottleneck = True
            warnings.append(
                f"The generator could not keep its schedule: p99 send lag was {lag:.1f} ms "
                f"(limit {limit:.3g} ms); it, or the machine it shares, was too busy. "
                "Latencies still count from the intended send times, but the server saw a burstier "
                "load than offered.")
        if result.send_rps < RATE_SHORTFALL * spec.rate:
            bottleneck = True
            warnings.append(
                f"The generator sent only {result.send_rps:.0f} req/s of the {spec.rate:g} req/s offered.")
        elif result.throughput_rps < RATE_SHORTFALL * spec.rate:
            warnings.append(
                f"The server answered only {result.throughput_rps:.0f} req/s of the {spec.rate:g} req/s "
                "offered: it is saturated or failing, and requests queue (their wait is in the latency).")
        if result.pool_waits:
            share = result.pool_waits / max(result.sent, 1)
            warnings.append(
                f"{result.pool_waits} requests ({share:.1%}) found all {result.connections} connections "
                "busy and waited for one; the wait is in their latency, but the server saw at most "
                f"{result.connections} requests at once. Raise `connections` to offer more concurrency.")

    if result.error_count:
        parts = ", ".join(f"{n} {kind}" for kind, n in result.errors.items() if n)
        warnings.append(f"{result.error_count} of {result.sent} requests failed ({parts}).")
        if result.errors.get("timeout") or result.errors.get("connect"):
            warnings.append("Timeouts and connect errors got no response, so they are not in the "
                            f"latency percentiles (a timeout took at least {spec.timeout_s:g} s).")
    if stopped:
        warnings.append("The run was stopped early; rates are over the time it actually ran.")
    return bottleneck, warnings
