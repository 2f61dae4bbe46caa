"""Lesson 7's pure parts: the hit-ratio model, TTL jitter, and the figures (no stack needed)."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from stack.course import caching, caching_plots
from stack.lab.checks.lab07 import _user_name, reference_hit_ratio


def test_steady_hit_ratio_is_reads_per_ttl_over_one_more():
    assert caching.steady_hit_ratio(2, 5) == pytest.approx(10 / 11)
    assert caching.steady_hit_ratio(0.8, 1) == pytest.approx(0.8 / 1.8)
    assert caching.steady_hit_ratio(5, 0) == 0 and caching.steady_hit_ratio(0, 5) == 0
    assert reference_hit_ratio(4, 2) == pytest.approx(caching.steady_hit_ratio(4, 2))


def test_ttl_jitter_stays_within_its_spread():
    aside = caching.CacheAside(cache=None, db=None, ttl_s=1.0, jitter=0.5, rng=random.Random(1))
    ttls = [aside.ttl_ms() for _ in range(2000)]
    assert 500 <= min(ttls) < 550 and 1450 < max(ttls) <= 1500
    assert caching.CacheAside(None, None, ttl_s=2.0).ttl_ms() == 2000     # no jitter: the TTL itself


def test_user_name_reads_plain_and_wrapped_values():
    assert _user_name('{"id": 1, "name": "a"}') == "a"
    assert _user_name('{"user": {"name": "b"}, "cost_s": 0.1}') == "b"
    assert _user_name("not json") is None and _user_name(None) is None


def test_figures_build_from_tables_shaped_like_the_experiments():
    ttl = pd.DataFrame([{"keys": k, "ttl_s": t, "hit_ratio": h, "db_lookups_per_s": d}
                        for k, t, h, d in [("uniform", 0, 0, 400), ("uniform", 1, .4, 240),
                                           ("zipf", 0, 0, 400), ("zipf", 1, .7, 120)]]).set_index(["keys", "ttl_s"])
    assert len(caching_plots.hit_ratio_by_ttl(ttl, 400, 500).data) == 5     # 2 kinds x 2 panels + the model
    storm = pd.DataFrame({"db_lookups": [64, 5], "slow_reads": [60, 40]}, index=["plain", "lock"])
    assert len(caching_plots.stampede(storm).data) == 2
    timeline = pd.DataFrame({"t": [0, .05], "lookups": [0, 3]})
    synced = pd.DataFrame({"worst_100ms": [200], "timeline": [timeline]}, index=pd.Index([0.0], name="jitter"))
    assert len(caching_plots.synchronized_expiry(synced).data) == 1
    frame = pd.DataFrame({"completed": [100, 98], "p99_ms": [5, 9], "err_5xx": [0, 0]}, index=[0.5, 1.0])
    frame.attrs["total"] = {"killed_at_s": 0.7}
    assert len(caching_plots.outage(frame).data) == 3


def test_busiest_window_counts_the_most_stamps_in_any_window_wherever_it_starts():
    burst = [1.0 + i * 0.001 for i in range(50)]                  # 50 lookups within 50 ms
    spread = [i * 0.03 for i in range(100)]                       # one every 30 ms: 4 per 100 ms
    assert caching.busiest_window(sorted(spread + burst), 0.1) == 50 + 4     # [0.99, 1.09)
    assert caching.busiest_window(spread, 0.1) == 4
    assert caching.busiest_window([], 0.1) == 0
    assert caching.busiest_window([0.0, 0.1], 0.1) == 1            # a window is half-open: [t, t + width)


def test_cumulative_is_what_a_counter_polled_every_step_would_read():
    frame = caching.cumulative([0.01, 0.02, 0.07, 0.2], seconds=0.2, step_s=0.05)
    assert frame["t"].tolist() == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert frame["lookups"].tolist() == [0, 2, 3, 3, 4]
