"""Dashboards built headless against a real stack (base_port 22000): plots follow the load
and control changes; a refused change shows its error and leaves the stack alone."""
from __future__ import annotations

import asyncio
import time

import pytest

from conftest import running_stack, shifted_port
from stack.load import LoadSpec, RequestMix
from stack import live

PORT = shifted_port(22000)
URL = f"http://127.0.0.1:{PORT}"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(state_dir):
    with running_stack(state_dir, PORT, replicas=2, strategy="round_robin") as s:
        yield s


def steady_load(seconds: float = 60) -> LoadSpec:
    return LoadSpec(url=URL, mode="open", rate=300, duration_s=seconds, mix=RequestMix.single("/users/{key}"))


async def until(predicate, timeout: float = 6.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def recent(panel, name: str, points: int = 2) -> list:
    """The last `points` y values of one trace, as drawn."""
    return panel.trace_data()[name][1][-points:]


def test_plots_follow_load_scaling_and_weights(stack):
    async def scenario():
        dash = live.dashboard(stack, controls=["replicas", "weights", "strategy", "ttl"],
                              panels=["throughput", "share", "cache"], load=steady_load())
        assert "application/vnd.jupyter.widget-view+json" in dash._repr_mimebundle_()
        dash.start()
        try:
            share, throughput = dash.panels["share"], dash.panels["throughput"]
            await until(lambda: len(share.trace_data().get("app-1", ((), ()))[1]) >= 3
                        and len(throughput.trace_data().get("throughput", ((), ()))[1]) >= 3, what="3 points")
            assert set(share.trace_data()) == {"app-1", "app-2"}
            assert all(35 <= y <= 65 for y in recent(share, "app-1") + recent(share, "app-2"))
            # About the offered 300 req/s: the median of the last three points (one point a stall of
            # the two cores stretched or squeezed does not decide it).
            rates = sorted(recent(throughput, "throughput", points=3))
            assert 150 <= rates[len(rates) // 2] <= 450, rates

            def plotted(control):
                return lambda: dash.changes and dash.changes[-1].control == control \
                    and dash.changes[-1].plotted_at is not None

            dash.controls["replicas"].value = 3              # as if the slider moved
            await until(plotted("replicas"), what="replicas 2 -> 3 on the plots")
            assert recent(share, "app-3", 1)[0] > 10                 # at least half a window of 1/3
            await asyncio.sleep(0.6)
            assert 25 <= recent(share, "app-3", 1)[0] <= 42
            assert len(dash.controls["weights"].value) == 3   # a weight slider for the new replica

            dash.controls["weights"].value = (1, 1, 4)
            await until(plotted("weights"), what="weights 1:1:4 on the plots")
            await asyncio.sleep(1.1)                           # two more samples fully at 1:1:4
            assert all(55 <= y <= 78 for y in recent(share, "app-3")), recent(share, "app-3")

            dash.controls["strategy"].value = "least_conn"
            await until(plotted("strategy"), what="strategy change on the plots")
            dash.controls["ttl"].value = 120
            await until(plotted("ttl"), what="ttl change on the plots")
            assert stack.applied().cache.ttl_s == 120

            labels = [a.text for a in share.figure.layout.annotations]
            assert labels == ["replicas → 3", "weights → 1:1:4", "strategy → least_conn", "TTL → 120"], labels
            assert len(share.figure.layout.shapes) == 4
        finally:
            dash.stop()
            await asyncio.gather(*dash._tasks, return_exceptions=True)
        return dash

    try:
        dash = asyncio.run(scenario())
    finally:
        stack.apply(replicas=2, weights=None, strategy="round_robin", ttl_s=300)
    times = {c["control"]: round(c["reaction_s"], 2) for c in dash.reaction_times()}
    print("reaction times (control moved -> first sample reflecting it plotted):", times)
    # Targets are 1 s (2 s for a new replica); the bounds leave room for a busy shared machine.
    assert times["replicas"] < 3.0 and max(times["weights"], times["strategy"], times["ttl"]) < 2.0, times


def test_refused_change_shows_error_reverts_and_leaves_stack(stack):
    before = stack.applied()

    async def scenario():
        dash = live.dashboard(stack, controls=["weights", "ttl"], panels=["share"])
        weights, ttl = dash.controls["weights"], dash.controls["ttl"]
        weights.value = (1, 2, 3)                 # three weights for two replicas
        await dash.settle()
        assert "balancer.weights" in weights.error.value and "#c00000" in weights.error.value
        assert weights.value == (1, 1)            # back to what is applied

        weights._sliders[0].value = 0             # a slider moved to 0: nginx has no weight 0
        await dash.settle()
        assert "balancer.weights[0]=0" in weights.error.value
        assert weights.value == (1, 1)

        ttl.value = -5
        await dash.settle()
        assert "cache.ttl_s=-5" in ttl.error.value and ttl.value == before.cache.ttl_s
        assert [c.error is not None for c in dash.changes] == [True, True, True]
        assert all(c.applied_at is None for c in dash.changes)

        ttl.value = 60                            # a good value clears the error
        await dash.settle()
        assert ttl.error.value == "" and stack.applied().cache.ttl_s == 60

    asyncio.run(scenario())
    assert stack.applied().with_changes(ttl_s=before.cache.ttl_s) == before
    stack.apply(ttl_s=before.cache.ttl_s)


def test_finished_run_stays_dimmed_under_the_next(stack):
    async def scenario():
        dash = live.dashboard(stack, controls=["strategy"], panels=["share"], load=steady_load(30))
        await dash.run(1.6, label="A")
        await dash.run(1.6, label="B")
        return dash

    dash = asyncio.run(scenario())
    traces = {t.name: t for t in dash.panels["share"].figure.data}
    assert {"app-1", "app-2", "app-1 (A)", "app-2 (A)"} <= set(traces)
    assert traces["app-1 (A)"].opacity < 1 and traces["app-1"].opacity == 1
    assert len(traces["app-1 (A)"].x) >= 2 and len(traces["app-1"].x) >= 2
    # Both runs are drawn from x = 0, so they line up.
    assert traces["app-1 (A)"].x[0] < 1.0 and traces["app-1"].x[0] < 1.0


def test_reaction_times_print_one_readable_line_per_change_and_stay_dicts():
    from stack.live.dashboard import ReactionTimes
    one = ReactionTimes([{"control": "replicas", "value": 3, "apply_s": 0.8479, "reaction_s": 1.2654, "error": None}])
    assert str(one) == "replicas -> 3: applied in 0.85 s, on the plots 1.27 s after the move"
    assert one[0]["reaction_s"] == 1.2654                      # still the numbers, for asserts
    two = ReactionTimes([*one, {"control": "replicas", "value": 0, "apply_s": None, "reaction_s": None,
                                "error": "app.replicas=0 is not allowed"}])
    assert str(two) == ("\n  replicas -> 3: applied in 0.85 s, on the plots 1.27 s after the move"
                        "\n  replicas -> 0: refused (app.replicas=0 is not allowed)")
    assert repr(ReactionTimes()) == "no control was changed"
    assert repr(two).startswith("  replicas -> 3")


def test_a_share_point_holds_at_least_a_hundred_requests_and_no_replica_before_it_ran():
    from stack.live.dashboard import Run
    from stack.live.panels import share
    from stack.sample.model import CacheSample, PostgresSample, ReplicaSample, Sample

    def sample(t, interval_s, rps):
        reps = {n: ReplicaSample(n, r, 0.0, 0, 0.0, 0.0, 0.0, 0, 0, 4) for n, r in rps.items()}
        return Sample(t, interval_s, reps, sum(rps.values()), CacheSample(), PostgresSample(), None)

    # 0.25 s samples of 120 req/s (30 requests each), split 3:1 and 1:3 in turn: even over time.
    run = Run("r", 100.0, [sample(100.0 + 0.25 * i, 0.25, {"app-1": 90.0, "app-2": 30.0} if i % 2 else
                                  {"app-1": 30.0, "app-2": 90.0}) for i in range(1, 9)])
    lines = {s.name: s.y for s in share(run)}
    assert lines["app-1"][0] == 75.0                    # the first point has nothing before it
    assert all(y == 50.0 for y in lines["app-1"][3:]), lines       # four samples make 100+ requests
    # A control change starts a new window: the point after it holds only what came after it.
    run.markers.append((1.6, "strategy -> ip_hash"))             # between the samples at 1.5 and 1.75 s
    assert {s.name: s.y for s in share(run)}["app-1"][6] == 75.0
    # So does a change in who answers: samples of 2 replicas never join one of 3.
    three = Run("r", 0.0, [sample(0.25, 0.25, {"app-1": 60.0, "app-2": 60.0}),
                           sample(0.5, 0.25, {"app-1": 40.0, "app-2": 40.0, "app-3": 40.0})])
    assert [round(y) for y in {s.name: s.y for s in share(three)}["app-3"][1:]] == [33]
    # Busy samples (100+ requests each) are shown as they are, and a new replica starts as a gap.
    busy = Run("r", 0.0, [sample(0.5, 0.5, {"app-1": 300.0}),
                          sample(1.0, 0.5, {"app-1": 100.0, "app-2": 300.0})])
    lines = {s.name: s.y for s in share(busy)}
    assert lines == {"app-1": [100.0, 25.0], "app-2": [None, 75.0]}, lines
