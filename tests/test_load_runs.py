"""stack.load against real HTTP servers (stack.load.testserver, in this process).

The important one is coordinated omission: when the server stalls, an open
loop's latency (from each request's intended send time) shows the stall; a
closed loop's latency histogram all but hides it.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from stack.load import (ERROR_CLASSES, LoadSpec, RequestMix, run_load, run_load_async, start_load)
from stack.load.testserver import TestServer

CLIENTS = ("fast", "aiohttp")


def accounted(r) -> bool:
    """Every request sent ended as a response or as a counted failure: none lost."""
    no_response = r.errors["connect"] + r.errors["timeout"] + r.errors["other"]
    return r.sent == r.responses + no_response and r.responses == sum(r.status_codes.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_replicas():
    with TestServer(identities=("app-1", "app-2"), delays_ms={"app-2": 30}) as server:
        yield server


@pytest.mark.parametrize("client", CLIENTS)
def test_open_loop_keeps_its_rate_and_attributes_each_response_to_its_replica(two_replicas, client):
    r = run_load(url=two_replicas.url, mode="open", arrivals="uniform", rate=200, duration_s=1.0, interval_s=0.25, client=client)
    assert accounted(r)
    assert r.sent == 200 and r.responses == 200 and r.ok == 200
    assert r.throughput_rps == pytest.approx(200, rel=0.1)
    assert set(r.replicas) == {"app-1", "app-2"}
    assert r.replicas["app-1"].count == r.replicas["app-2"].count == 100       # server takes turns
    assert r.replicas["app-1"].count == two_replicas.served["app-1"]
    fast, slow = (r.replicas[n].latency.summary() for n in ("app-1", "app-2"))
    assert fast["p50_ms"] < 15 <= 30 <= slow["p50_ms"] < 200                   # app-2 adds 30 ms
    frame = r.to_dataframe()
    assert frame.loc["app-2", "responses"] == 100 and frame.loc["all", "responses"] == 200
    assert frame.loc["app-2", "p50_ms"] > frame.loc["app-1", "p50_ms"]
    assert r.send_lag.count == 200 and r.send_lag.percentile_ms(50) < 5


@pytest.mark.parametrize("client", CLIENTS)
def test_errors_are_classified_and_counted_never_dropped(client):
    with TestServer() as server:
        mix = RequestMix.parse("GET /status/500:1, GET /status/404:1, GET /drop:1, GET /ok:1")
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=200, duration_s=0.5, mix=mix, client=client)
    assert accounted(r) and r.sent == 100
    per = {name: g for name, g in r.requests.items()}
    assert per["GET /status/500"].errors["5xx"] == per["GET /status/500"].count > 10
    assert per["GET /status/404"].errors["4xx"] == per["GET /status/404"].count > 10
    assert per["GET /drop"].errors["other"] > 10 and per["GET /drop"].count == 0
    assert r.ok == per["GET /ok"].count > 10
    assert r.errors["5xx"] + r.errors["4xx"] + r.errors["other"] + r.ok == 100
    assert r.status_codes[500] == r.errors["5xx"]
    assert "5xx" in r.error_examples and "500" in r.error_examples["5xx"]
    assert any("failed" in w for w in r.warnings)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_closed_port_is_a_connect_error(client):
    r = run_load(url=f"http://127.0.0.1:{free_port()}", mode="open", arrivals="uniform", rate=50, duration_s=0.4, client=client)
    assert accounted(r)
    assert r.errors["connect"] == r.sent == 20 and r.responses == 0
    assert r.latency.count == 0                       # no response, so not in the percentiles


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stalling_server_gives_timeouts_and_the_run_still_ends_on_time(client):
    with TestServer() as server:
        began = time.perf_counter()
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=40, duration_s=0.5, path="/hang", timeout_s=0.3,
                     client=client)
        took = time.perf_counter() - began
    assert accounted(r)
    assert r.errors["timeout"] == r.sent == 20
    assert took < 0.5 + 0.3 + 0.5                     # duration + timeout + slack
    assert any("timed out" in w or "timeout" in w for w in r.warnings)


def test_requests_outstanding_at_the_hard_deadline_are_counted_as_timeouts():
    # Closed loop: 3 workers each stuck on /hang when the window closes at 0.3 s.
    with TestServer() as server:
        r = run_load(url=server.url, mode="closed", connections=3, duration_s=0.3, path="/hang",
                     timeout_s=0.4)
    assert accounted(r)
    assert r.sent == 3 and r.errors["timeout"] == 3
    assert r.elapsed_s < 0.3 + 0.4 + 0.3


def test_closed_loop_requests_time_out_at_their_own_deadline_and_the_users_carry_on():
    # 2 users on /hang for 1 s with a 0.25 s timeout: each request is expired by the
    # client's sweep, not only by the run's hard deadline, and the user sends again.
    with TestServer() as server:
        r = run_load(url=server.url, mode="closed", connections=2, duration_s=1.0, path="/hang", timeout_s=0.25)
    assert accounted(r)
    assert r.errors["timeout"] == r.sent >= 2 * 3


def test_open_loop_requests_still_out_at_the_hard_deadline_are_timeouts(monkeypatch):
    # With the client's periodic sweep off, only the run's hard deadline can end the
    # hanging requests (sent on idle connections, without a task): none may go uncounted.
    from stack.load.fastclient import FastClient
    monkeypatch.setattr(FastClient, "_sweep", lambda self: None)
    with TestServer() as server:
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=40, duration_s=0.25, path="/hang",
                     timeout_s=0.3, connections=20)
    assert accounted(r)
    assert r.errors["timeout"] == r.sent == 10 and r.pool_waits == 0


def test_open_loop_latency_includes_the_wait_for_a_free_connection():
    # One connection, each request takes ~50 ms, one scheduled every 25 ms: the queue
    # grows and every wait is part of the latency, counted from the intended send time.
    with TestServer() as server:
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=40, duration_s=0.5, path="/sleep/50",
                     connections=1, timeout_s=5)
    assert accounted(r) and r.responses == 20
    assert r.pool_waits >= 15
    lat = r.latency.summary()
    assert lat["min_ms"] >= 45
    assert lat["max_ms"] > 400                        # ~20 * 50 ms - 19 * 25 ms = 525 ms
    assert any("connections busy" in w for w in r.warnings)


def test_coordinated_omission_open_loop_sees_the_stall_closed_loop_hides_it():
    """The server holds every request arriving from 0.5 s to 1.5 s until 1.5 s."""
    with TestServer(stall=(0.5, 1.0)) as server:
        opened = run_load(url=server.url, mode="open", arrivals="uniform", rate=200, duration_s=2.5)
    with TestServer(stall=(0.5, 1.0)) as server:
        closed = run_load(url=server.url, mode="closed", connections=2, duration_s=2.5)
        held_in_closed = server.stalled
    assert accounted(opened) and accounted(closed)

    # Open loop: ~200 requests were scheduled during the stall; their latency counts
    # from when they were due, so it runs from ~1000 ms down to ~0.
    o = opened.latency
    assert o.percentile_ms(99) > 800
    assert o.percentile_ms(90) > 500
    assert opened.send_lag.percentile_ms(99) < 150    # and the generator kept (near) its schedule

    # Closed loop: only its 2 in-flight requests waited; the rest of the run was fast,
    # so the same stall all but vanishes from the percentiles.
    c = closed.latency
    assert held_in_closed == 2
    assert c.max_ms() > 900                           # it did hit the stall...
    assert c.percentile_ms(99) < 100                  # ...but p99 hides it
    assert closed.sent > 20 * opened.sent / 100       # many fast requests dilute the 2 slow ones


def test_interval_snapshots_stream_while_running_through_an_async_iterator_and_a_callback():
    seen_by_callback = []

    async def go():
        with TestServer(identities=("a", "b")) as server:
            run = start_load(url=server.url, mode="open", arrivals="uniform", rate=100, duration_s=1.0, interval_s=0.25,
                             on_interval=seen_by_callback.append)
            streamed = []
            async for snap in run:
                streamed.append((snap, run.done))
            return streamed, await run

    streamed, result = asyncio.run(go())
    assert not streamed[0][1]                         # the first came while the run was going
    snaps = [s for s, _ in streamed]
    assert snaps == seen_by_callback == result.intervals
    assert len(snaps) >= 4
    assert sum(s.sent for s in snaps) == result.sent == 100
    assert sum(s.completed for s in snaps) == 100
    assert sum(sum(s.replicas.values()) for s in snaps) == 100
    full = [s for s in snaps if s.interval_s > 0.2]
    # Each interval's rate is its responses / its length; on a busy machine single intervals
    # wobble, their mean does not.
    assert sum(s.throughput_rps for s in full) / len(full) == pytest.approx(100, rel=0.15)
    assert all(s.p50_ms is not None and s.p99_ms >= s.p50_ms for s in full)
    assert set(snaps[0].errors) == set(ERROR_CLASSES)
    frame = result.intervals_dataframe()
    assert list(frame["sent"]) == [s.sent for s in snaps]
    assert frame[["rep_a", "rep_b"]].to_numpy().sum() == 100


def test_result_to_dict_is_json_and_histograms_merge_back():
    from stack.load import LatencyHistogram
    with TestServer(identities=("x", "y")) as server:
        r = run_load(url=server.url, mode="closed", connections=2, duration_s=0.3)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["sent"] == r.sent and data["mode"] == "closed"
    assert set(data["errors"]) == set(ERROR_CLASSES)
    assert data["generator_bottleneck"] in (True, False) and isinstance(data["warnings"], list)
    parts = [LatencyHistogram.decode(data["replicas"][n]["histogram"]) for n in ("x", "y")]
    merged = LatencyHistogram.merged(parts)
    assert merged.count == r.responses == LatencyHistogram.decode(data["latency_histogram"]).count


def test_mix_weights_put_bodies_and_zipf_keys_reach_the_server():
    with TestServer() as server:
        mix = RequestMix.users(read_ratio=0.7, keys="zipf", n=1000, s=1.2)
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=400, duration_s=1.0, mix=mix, seed=3)
        seen, bodies = dict(server.seen), list(server.bodies)
    assert accounted(r) and r.ok == 400
    gets = sum(n for k, n in seen.items() if k.startswith("GET /users/"))
    puts = sum(n for k, n in seen.items() if k.startswith("PUT /users/"))
    assert gets + puts == 400 and abs(gets / 400 - 0.7) < 0.08
    assert r.requests["GET /users/{id}"].count == gets and r.requests["PUT /users/{id}"].count == puts
    assert json.loads(bodies[0])["name"].startswith("load-")
    hottest = max(seen, key=seen.get)
    assert hottest in ("GET /users/1", "PUT /users/1")


@pytest.mark.parametrize("client", CLIENTS)
def test_requests_spread_across_client_source_addresses(client):
    with TestServer() as server:
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=200, duration_s=0.5, client=client,
                     source_addresses=("127.0.0.2", "127.0.0.3"))
        peers, forwarded = dict(server.peers), dict(server.forwarded)
        plain = run_load(url=server.url, mode="closed", connections=1, duration_s=0.1, client=client)
        without = {key: n for key, n in server.forwarded.items() if key[0] == "127.0.0.1"}
    assert accounted(r) and r.ok == 100
    assert peers == {"127.0.0.2": 50, "127.0.0.3": 50}
    # Each request names its own source (a balancer behind Docker's port proxy sees only the proxy)...
    assert forwarded == {("127.0.0.2", "127.0.0.2"): 50, ("127.0.0.3", "127.0.0.3"): 50}
    # ... and a run from the default address claims none
    assert plain.ok > 0 and without == {("127.0.0.1", None): plain.ok}


def test_generator_bottleneck_is_reported_when_it_cannot_keep_its_schedule_or_cpu():
    with TestServer() as server:
        # 2,000 req/s: half the gap between sends (0.25 ms) is no floor for the lag a busy loop shows.
        r = run_load(url=server.url, mode="open", arrivals="uniform", rate=2000, duration_s=0.5,
                     max_send_lag_ms=0.001, cpu_limit=0.0001)
        # (a loose lag limit: on a busy shared machine a 5 ms hiccup is not this test's business)
        ok = run_load(url=server.url, mode="open", arrivals="uniform", rate=100, duration_s=0.5, max_send_lag_ms=250)
    assert r.generator_bottleneck
    assert any("could not keep its schedule" in w for w in r.warnings)
    assert any("CPU core" in w for w in r.warnings)
    assert not ok.generator_bottleneck and ok.warnings == []


def test_run_load_works_inside_a_running_loop_and_async_api_in_it():
    async def go(url):
        blocking = run_load(url=url, mode="open", arrivals="uniform", rate=50, duration_s=0.2)    # from a helper thread
        awaited = await run_load_async(LoadSpec(url=url, mode="closed", connections=1, duration_s=0.2))
        return blocking, awaited

    with TestServer() as server:
        blocking, awaited = asyncio.run(go(server.url))
    assert blocking.ok == 10 and awaited.ok > 5


def _stopped_after(seconds: float, **fields):
    """A 10 s run stopped after `seconds`: its result and how long it took in all."""
    async def go(url):
        run = start_load(url=url, duration_s=10, **fields)
        await asyncio.sleep(seconds)
        run.stop()
        return await run

    with TestServer() as server:
        began = time.perf_counter()
        r = asyncio.run(go(server.url))
        return r, time.perf_counter() - began


def test_stop_ends_sending_early_and_counts_what_was_in_flight():
    r, took = _stopped_after(0.3, mode="open", arrivals="uniform", rate=100)
    assert took < 2 and accounted(r)
    assert 20 <= r.sent <= 60
    assert any("stopped early" in w for w in r.warnings)


def test_stop_reaches_the_closed_loop_users_too():
    r, took = _stopped_after(0.3, mode="closed", connections=4, path="/sleep/5")
    assert took < 2 and accounted(r) and r.responses > 0
    assert any("stopped early" in w for w in r.warnings)


def test_a_generator_hiccup_counts_in_latency_because_it_is_measured_from_the_intended_time():
    # Block the generator's own loop for 300 ms: requests due meanwhile go out late.
    # Their latency must include that delay (it is measured from when they were due),
    # and the run must say the generator could not keep its schedule.
    async def go(url):
        run = start_load(url=url, mode="open", arrivals="uniform", rate=200, duration_s=1.0)
        await asyncio.sleep(0.3)
        time.sleep(0.3)                                 # a 300 ms stall of the generator itself
        return await run

    with TestServer() as server:
        r = asyncio.run(go(server.url))
    assert accounted(r) and r.ok == 200
    assert r.send_lag.max_ms() > 250
    assert r.latency.max_ms() > 250                     # the server was fast; the delay was ours
    assert r.latency.percentile_ms(90) > 50            # ~60 of 200 requests were due in the stall
    assert r.generator_bottleneck
    assert any("could not keep its schedule" in w for w in r.warnings)


@pytest.mark.parametrize("client", CLIENTS)
def test_closed_loop_classifies_errors_reconnects_and_uses_every_source_address(client):
    with TestServer() as server:
        mix = RequestMix.parse("GET /status/500:1, GET /drop:1, GET /bye:1, GET /ok:1")
        r = run_load(url=server.url, mode="closed", connections=4, duration_s=0.5, mix=mix, client=client,
                     source_addresses=("127.0.0.2", "127.0.0.3"))
        peers, connections = dict(server.peers), server.connections
    assert accounted(r) and r.sent > 100
    per = r.requests
    assert per["GET /status/500"].errors["5xx"] == per["GET /status/500"].count > 20
    assert per["GET /drop"].errors["other"] > 20 and per["GET /drop"].count == 0
    assert per["GET /bye"].count > 20 and sum(per["GET /bye"].errors.values()) == 0
    assert per["GET /ok"].count > 20
    assert connections > per["GET /drop"].errors["other"]     # a new connection after each drop/bye
    assert set(peers) == {"127.0.0.2", "127.0.0.3"}


@pytest.mark.parametrize("client", CLIENTS)
def test_closed_loop_against_a_closed_port_counts_connect_errors(client):
    r = run_load(url=f"http://127.0.0.1:{free_port()}", mode="closed", connections=2, duration_s=0.2,
                 client=client)
    assert accounted(r) and r.sent > 2
    assert r.errors["connect"] == r.sent


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_cancelling_a_run_stops_sending_at_once(mode):
    """A cancelled run (e.g. a dashboard stopped) must not keep loading the server until duration_s."""
    async def scenario(server):
        spec = LoadSpec(url=server.url, mode=mode, connections=4, duration_s=30,
                        rate=200 if mode == "open" else None, path="/sleep/5")
        task = asyncio.ensure_future(run_load_async(spec))
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.1)
        seen = sum(server.seen.values())
        await asyncio.sleep(0.5)
        return seen, sum(server.seen.values())

    with TestServer() as server:
        at_cancel, later = asyncio.run(scenario(server))
    assert at_cancel > 0 and later == at_cancel, (at_cancel, later)


def test_throughput_counts_only_what_was_answered_inside_the_window():
    """Offered 200 req/s to a server that answers 50 req/s: throughput is what it answered."""
    with TestServer(delays_ms={"test-1": 80}) as server:
        # 4 connections x (1 / 80 ms) = 50 responses per second at most.
        result = run_load(LoadSpec(url=server.url, mode="open", arrivals="uniform", rate=200, connections=4, duration_s=2,
                                   timeout_s=10, path="/x"))
    assert result.responses == result.sent == 400
    assert result.throughput_rps < 60, result.throughput_rps


def test_poisson_arrivals_send_the_rate_on_average_and_repeat_for_a_seed():
    with TestServer() as server:
        runs = [run_load(url=server.url, mode="open", rate=400, duration_s=1.0, seed=seed) for seed in (5, 5, 6)]
    assert all(accounted(r) and r.error_count == 0 for r in runs)
    assert runs[0].sent == runs[1].sent                       # the same seed, the same schedule
    assert all(abs(r.sent - 400) <= 80 for r in runs)         # ~ +-4 standard deviations of Poisson(400)
    assert runs[0].sent != 400 or runs[2].sent != 400         # not the uniform schedule's exact count


def test_send_lag_limit_is_half_the_gap_between_sends_at_low_rates():
    """8.4 ms late at 50 req/s (sends 20 ms apart) does not bunch the load; at 200 req/s it does."""
    from types import SimpleNamespace
    from stack.load.bottleneck import judge

    def judged(rate, lag_ms=8.4, p50_ms=20.0):
        lag = SimpleNamespace(percentile_ms=lambda q: lag_ms)
        latency = SimpleNamespace(count=rate, percentile_ms=lambda q: p50_ms)
        result = SimpleNamespace(cpu=0.1, send_lag=lag, latency=latency, send_rps=rate, throughput_rps=rate,
                                 pool_waits=0, error_count=0, errors={}, sent=rate, connections=8)
        return judge(LoadSpec(url="http://127.0.0.1:1", mode="open", rate=rate, duration_s=1), result)
    assert judged(50) == (False, [])
    bottleneck, warnings = judged(200)
    assert bottleneck and "p99 send lag was 8.4 ms (limit 5 ms)" in warnings[0], warnings
    # Past capacity (CI41, docker: 9.9 ms late at 240 req/s, where requests queue for hundreds of
    # ms) the lag is small beside what was measured; below capacity (p50 ~20 ms) it is not.
    assert judged(240, lag_ms=9.9, p50_ms=400.0) == (False, [])
    bottleneck, warnings = judged(240, lag_ms=9.9, p50_ms=22.0)
    assert bottleneck and "(limit 5 ms)" in warnings[0], warnings
    # A generator late on every send raises the median itself: 40 ms late, p50 60 ms, still flagged.
    assert judged(240, lag_ms=40.0, p50_ms=60.0)[0]
