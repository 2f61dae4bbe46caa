"""stack.load building blocks that need no network: pacing, keys, mixes, histograms, specs."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from stack.load import Keys, LatencyHistogram, LoadSpec, LoadSpecError, Request, RequestMix
from stack.load.mix import MixPlan
from stack.load.schedule import delay_until, due_count, intended_time, total_requests


# -- schedule -------------------------------------------------------------------------------

def test_intended_times_are_evenly_spaced_from_start():
    assert intended_time(10.0, 0, 100) == 10.0
    assert intended_time(10.0, 1, 100) == pytest.approx(10.01)
    assert intended_time(10.0, 250, 100) == pytest.approx(12.5)


def test_total_requests_counts_indices_inside_the_window():
    assert total_requests(100, 1.0) == 100          # i / 100 < 1.0 for i = 0..99
    assert total_requests(0.1, 30) == 3             # float noise: 0.1 * 30 = 3.0000000000000004
    assert total_requests(3, 0.5) == 2              # 0 and 1/3 s
    assert total_requests(5000, 10) == 50_000


def test_due_count_batches_every_request_whose_time_has_passed():
    start, rate = 100.0, 1000
    assert due_count(start, 99.9, rate, 50) == 0            # before the start
    assert due_count(start, 100.0, rate, 50) == 1           # request 0 is due at start
    assert due_count(start, 100.0049, rate, 50) == 5        # 0..4 are due at 4.9 ms
    assert due_count(start, 100.005, rate, 50) == 6         # and 5 exactly at 5 ms
    assert due_count(start, 200.0, rate, 50) == 50          # never past the total


def test_delay_until_is_zero_once_due():
    assert delay_until(0.0, 10, 100, 0.05) == pytest.approx(0.05)
    assert delay_until(0.0, 10, 100, 0.5) == 0.0


# -- keys -------------------------------------------------------------------------------------

def test_keys_are_deterministic_per_seed():
    draw = lambda keys, seed: keys.sampler(random.Random(seed))(500)   # noqa: E731
    for keys in (Keys.uniform(1000), Keys.zipf(1000, 1.2)):
        assert draw(keys, 7) == draw(keys, 7)
        assert draw(keys, 7) != draw(keys, 8)
        assert all(1 <= k <= 1000 for k in draw(keys, 7))


def test_uniform_keys_cover_the_range_evenly():
    keys = Keys.uniform(10)
    counts = Counter(keys.sampler(random.Random(1))(20_000))
    assert set(counts) == set(range(1, 11))
    assert max(counts.values()) / min(counts.values()) < 1.15     # 2,000 each, +-~5 %


def test_zipf_keys_follow_one_over_k_to_the_s():
    keys = Keys.zipf(100, 1.0)
    probs = keys.probabilities()
    assert sum(probs) == pytest.approx(1.0)
    assert probs[0] / probs[1] == pytest.approx(2.0)            # P(1) / P(2) = 2**s
    n = 50_000
    counts = Counter(keys.sampler(random.Random(3))(n))
    for k in (1, 2, 10):
        expected = probs[k - 1] * n
        assert abs(counts[k] - expected) < 5 * expected ** 0.5, (k, counts[k], expected)
    # A steeper exponent concentrates more traffic on the hottest key.
    steep = Counter(Keys.zipf(100, 2.0).sampler(random.Random(3))(n))
    assert steep[1] > 2 * counts[1]


def test_bad_key_settings_name_field_value_and_what_is_allowed():
    with pytest.raises(LoadSpecError, match=r"keys\.s=0 is not allowed: a number greater than 0"):
        Keys.zipf(10, 0).validate()
    with pytest.raises(LoadSpecError, match=r"keys\.n=0 is not allowed: an integer from 1"):
        Keys.uniform(0).validate()
    with pytest.raises(LoadSpecError, match="keys='pareto' is not allowed: one of 'uniform', 'zipf'"):
        Keys.of("pareto")


# -- mixes ------------------------------------------------------------------------------------

def test_users_mix_weights_keys_and_bodies():
    mix = RequestMix.users(read_ratio=0.75, keys="zipf", n=50)
    assert mix.shares() == {"GET /users/{id}": 0.75, "PUT /users/{id}": 0.25}
    plan = MixPlan(mix, "http://127.0.0.1:9", seed=5)
    sent = [plan.next() for _ in range(4000)]
    methods = Counter(p.method for p in sent)
    assert abs(methods["GET"] / 4000 - 0.75) < 0.03
    put = next(p for p in sent if p.method == "PUT")
    user_id = put.url.path.rsplit("/", 1)[1]
    assert json.loads(put.data) == {"name": f"load-{user_id}"}
    assert put.raw.startswith(f"PUT /users/{user_id} HTTP/1.1\r\nHost: 127.0.0.1:9\r\n".encode())
    assert put.raw.endswith(b"\r\n\r\n" + put.data)
    assert f"Content-Length: {len(put.data)}\r\n".encode() in put.raw
    ids = Counter(int(p.url.path.rsplit("/", 1)[1]) for p in sent)
    assert ids.most_common(1)[0][0] == 1                       # Zipf: id 1 is the hottest


def test_mix_sequence_is_fixed_by_the_seed():
    mix = RequestMix.users(0.9, keys="uniform")
    seq = lambda seed: [(p.method, str(p.url)) for p in map(lambda _: plan.next(), range(300))]  # noqa
    plan = MixPlan(mix, "http://h:1", seed=1)
    a = seq(1)
    plan = MixPlan(mix, "http://h:1", seed=1)
    assert seq(1) == a
    plan = MixPlan(mix, "http://h:1", seed=2)
    assert seq(2) != a


def test_work_mix_and_parsed_mix():
    work = RequestMix.work(short_ms=5, long_ms=200, long_ratio=0.1)
    assert work.shares() == {"GET /work?ms=5&kind=io": 0.9, "GET /work?ms=200&kind=io": 0.1}
    parsed = RequestMix.parse("GET /users/{key}:9, PUT /users/{key}:1", body={"name": "n{key}"})
    assert [(r.method, r.weight, r.json) for r in parsed.requests] == [
        ("GET", 9.0, None), ("PUT", 1.0, {"name": "n{key}"})]
    with pytest.raises(LoadSpecError, match="mix="):
        RequestMix.parse("GET /x:lots")
    with pytest.raises(LoadSpecError, match=r"mix\.requests\[0\]\.method='FETCH'"):
        RequestMix((Request("FETCH", "/x"),)).validate()
    with pytest.raises(LoadSpecError, match=r"mix\.requests\[0\]\.path='x'"):
        RequestMix((Request("GET", "x"),)).validate()


# -- histograms ---------------------------------------------------------------------------------

def test_histogram_percentiles_at_microsecond_resolution():
    h = LatencyHistogram()
    for us in range(1, 1001):                    # 1 us .. 1 ms: exact at this size
        h.record_us(us)
    assert h.count == 1000
    p = h.percentiles_ms((50.0, 99.0, 100.0))
    assert p[50.0] == pytest.approx(0.5, abs=0.001)
    assert p[99.0] == pytest.approx(0.99, abs=0.001)
    assert h.max_ms() == pytest.approx(1.0, abs=0.001)
    assert h.mean_ms() == pytest.approx(0.5005)


def test_histogram_merge_equals_recording_everything_in_one():
    rng = random.Random(4)
    values = [int(rng.expovariate(1 / 3000)) + 1 for _ in range(20_000)]
    a, b, whole = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, v in enumerate(values):
        (a if i % 3 else b).record_us(v)
        whole.record_us(v)
    merged = LatencyHistogram.merged([a, b])
    assert merged.count == whole.count == 20_000
    assert merged.summary() == whole.summary()
    assert a.count + b.count == 20_000 and a.summary() != whole.summary()


def _recorded(values) -> LatencyHistogram:
    h = LatencyHistogram(highest_us=1_000_000)
    for v in values:
        h.record_us(v)
    return h


def test_histogram_batch_records_exactly_what_one_by_one_does():
    rng = random.Random(5)
    edges = [-3, 0, 1, 2047, 2048, 2049, 4095, 4096, 1_000_000, 1_000_001, 5_000_000]   # bucket edges, clamping
    values = edges + [int(rng.expovariate(1 / 20_000)) for _ in range(20_000)]
    one_by_one, batch = _recorded(values), LatencyHistogram(highest_us=1_000_000)
    batch.record_many_us(values)
    assert batch.count == len(values) and batch.clamped == one_by_one.clamped == 2
    assert batch.summary() == one_by_one.summary()
    assert batch.encode() == one_by_one.encode()             # every bucket's count, not just percentiles
    batch.clear()                                            # reused, as the recorder does
    batch.record_many_us(values[:100])
    assert batch.encode() == _recorded(values[:100]).encode()        # nothing left over


@pytest.mark.parametrize("n", [1, 2, 3, 10, 5_000])
def test_histogram_percentiles_are_hdrhistograms_own(n):
    rng = random.Random(n)
    h = LatencyHistogram()
    h.record_many_us([int(rng.expovariate(1 / 20_000)) for _ in range(n)])
    percentiles = (0.0, 0.1, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)
    for histogram in (h, LatencyHistogram.decode(h.encode())):
        reference = histogram.hdr.get_percentile_to_value_dict(list(percentiles))   # the library's loop
        assert histogram.percentiles_ms(percentiles) == {p: reference[p] / 1000 for p in percentiles}


def test_histogram_survives_encoding_and_clamps_instead_of_dropping():
    h = LatencyHistogram(highest_us=1_000_000)
    h.record_s(0.002)
    h.record_s(5.0)                              # beyond the range: kept at the top, and counted
    assert h.count == 2 and h.clamped == 1
    copy = LatencyHistogram.decode(h.encode())
    assert copy.count == 2
    assert copy.percentile_ms(50) == h.percentile_ms(50)
    assert copy.max_ms() == h.max_ms()
    empty = LatencyHistogram()
    assert empty.percentile_ms(99) is None and empty.summary()["count"] == 0


# -- specs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    (dict(rate=0), "rate=0 is not allowed: a number greater than 0"),
    (dict(rate=None), "rate=None is not allowed: a rate in requests per second for mode='open'"),
    (dict(mode="closed", rate=None), "connections=None is not allowed"),
    (dict(mode="closed", rate=5, connections=2), "rate=5 is not allowed: None for mode='closed'"),
    (dict(mode="batch"), "mode='batch' is not allowed: one of 'open', 'closed'"),
    (dict(duration_s=0), "duration_s=0 is not allowed"),
    (dict(timeout_s=-1), "timeout_s=-1 is not allowed"),
    (dict(url="127.0.0.1:80"), "url='127.0.0.1:80' is not allowed: an http:// or https:// URL"),
    (dict(url="http://127.0.0.1:80/users"), "a base URL without path or query"),
    (dict(source_addresses=("127.0.0.300",)), r"source_addresses\[0\]='127.0.0.300' is not allowed"),
    (dict(connections=1, source_addresses=("127.0.0.2", "127.0.0.3")), "at least one per source address"),
    (dict(client="fast", url="https://example.org"), "client='fast' is not allowed"),
    (dict(path="health"), "path='health' is not allowed"),
])
def test_bad_specs_say_field_value_and_what_is_allowed(fields, message):
    base = dict(url="http://127.0.0.1:18080", mode="open", rate=100)
    with pytest.raises(LoadSpecError, match=message):
        LoadSpec(**{**base, **fields})


def test_open_loop_pool_is_sized_for_the_rate_unless_given():
    spec = LoadSpec(url="http://127.0.0.1:1", rate=5000)
    assert spec.pool_size == 500                     # 0.1 s of arrivals (Little's law)
    assert LoadSpec(url="http://127.0.0.1:1", rate=10).pool_size == 32
    assert LoadSpec(url="http://127.0.0.1:1", rate=10, connections=3).pool_size == 3
    assert spec.client_kind == "fast"
    assert LoadSpec(url="https://127.0.0.1:1", rate=10).client_kind == "aiohttp"


# -- arrival processes -------------------------------------------------------------

def test_poisson_gaps_have_the_mean_and_spread_of_an_exponential():
    from stack.load.schedule import poisson_gaps
    gaps = poisson_gaps(rate=500, count=20_000, seed=7)
    mean = sum(gaps) / len(gaps)
    sd = (sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1)) ** 0.5
    assert mean == pytest.approx(1 / 500, rel=0.05)
    assert sd / mean == pytest.approx(1.0, rel=0.05)     # an exponential's coefficient of variation is 1


def test_poisson_schedule_repeats_for_a_seed_and_differs_across_seeds():
    from stack.load.schedule import poisson_gaps
    assert poisson_gaps(100, 50, seed=3) == poisson_gaps(100, 50, seed=3)
    assert poisson_gaps(100, 50, seed=3) != poisson_gaps(100, 50, seed=4)


def test_arrivals_stay_inside_the_window_and_start_at_zero():
    from stack.load.schedule import Arrivals
    for kind in ("poisson", "uniform"):
        arrivals = Arrivals(kind, rate=1000, duration_s=2.0, seed=1)
        offsets = list(iter(arrivals.next_offset, None))
        assert offsets[0] == 0.0 and all(0 <= o < 2.0 for o in offsets)
        assert offsets == sorted(offsets)
        assert len(offsets) == pytest.approx(2000, rel=0.1 if kind == "poisson" else 0)


def test_uniform_arrivals_are_evenly_spaced():
    from stack.load.schedule import Arrivals
    arrivals = Arrivals("uniform", rate=100, duration_s=0.05)
    assert list(iter(arrivals.next_offset, None)) == pytest.approx([0, 0.01, 0.02, 0.03, 0.04])


def test_unknown_arrivals_name_the_field_and_the_choices():
    with pytest.raises(LoadSpecError, match=r"arrivals='gaussian' is not allowed.*poisson.*uniform"):
        LoadSpec(url="http://127.0.0.1:1", rate=10, arrivals="gaussian")
