"""The mystery stacks of lesson and lab 8: each hides one real bottleneck.

Unit part: the visible face of a scenario names a symptom, never its cause. Live part (real
servers): for every scenario, its named fix improves p99 at least 2x and a plausible wrong
fix does not, measured with the scenario's own workload (300 req/s, Poisson).
"""
from __future__ import annotations

import pytest

import stack
from stack.errors import StackError
from stack.load import run_load
from stack.scenarios import CAUSES, FIX_STEPS, SCENARIOS, scenario

from conftest import running_stack, shifted_port

BASE_PORT = shifted_port(21600)   # below the ephemeral range (32768+) even when shifted


def test_scenario_lookup_and_a_clear_error_for_an_unknown_name():
    assert stack.scenario("mystery-1") is SCENARIOS["mystery-1"]
    with pytest.raises(StackError, match="mystery-1"):
        scenario("mystery-9")


def test_at_least_three_root_causes_and_each_fix_is_one_of_the_articles_steps():
    causes = {sc._cause for sc in SCENARIOS.values()}
    assert len(causes) >= 3 and causes <= set(CAUSES)
    labels = [label for label, _ in FIX_STEPS]
    for sc in SCENARIOS.values():
        assert sc.fix_step() in labels, sc.name
        # Several settings change, so the visible config does not point at the cause.
        assert len(sc.changes) >= 4, sc.name


def test_the_visible_face_of_a_scenario_is_the_symptom_only():
    for sc in SCENARIOS.values():
        face = repr(sc) + sc._repr_markdown_() + sc.symptom
        assert "why?" in sc.symptom
        for word in (sc._cause, *sc.fix, "pool", "ip_hash", "replica lag", "commit", "slot"):
            assert word not in face, (sc.name, word)


def test_a_diagnosis_names_a_known_cause():
    with pytest.raises(StackError, match="one of app_capacity"):
        SCENARIOS["mystery-1"].diagnose("the network")
    assert SCENARIOS["mystery-1"].diagnose(...) is None


def _p99(s, sc, seconds=2.0):
    """p99 of the scenario's workload; measured again when the generator itself fell behind.
    2 s of 300 req/s: 600 requests; the broken stacks measured 633-1317 ms, fixed 43-51 ms (the
    asserts want 2x), so the third second only cost time."""
    for _ in range(3):
        result = run_load(sc.workload(s, seconds=seconds))
        if not result.generator_bottleneck:
            break
    return result.latency_ms()["p99_ms"], result


@pytest.fixture(scope="module")
def live(state_dir):
    with running_stack(state_dir, BASE_PORT) as s:
        yield s


@pytest.mark.stack
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_named_fix_cures_p99_and_a_wrong_fix_does_not(live, name):
    sc = SCENARIOS[name]
    sc.apply(live)
    assert sc.still_broken(live)
    broken, _ = _p99(live, sc)
    live.apply(**sc.fix)
    assert not sc.still_broken(live)
    fixed, result = _p99(live, sc)
    sc.apply(live)
    live.apply(**sc.wrong_fix)
    wrong, _ = _p99(live, sc)
    print(f"\n{name}: p99 broken {broken:.0f} ms, named fix {fixed:.0f} ms, wrong fix {wrong:.0f} ms")
    # Broken, one resource runs past 100% (utilisation 1.6, or writes waiting 500 ms for the
    # replica): p99 is 1-2 s. Healthy, p99 is 40 ms of report plus noise (50-150 ms on two
    # busy cores). 2x is the bar and leaves room for either to drift.
    assert broken >= 2 * fixed, (broken, fixed)
    assert result.error_count == 0
    # The wrong fix leaves the bottleneck in place: p99 stays within 2x of the broken stack's.
    assert wrong > broken / 2, (broken, wrong)
    if name == "mystery-3":
        # A shrunk pool is really small: each replica holds one read connection, as it reports.
        from stack.course.readings import replica_metrics
        sc.apply(live)
        run_load(sc.workload(live, seconds=1.0))
        assert all(m["pools"]["read"]["size"] <= 1 for m in replica_metrics(live).values())
