"""Every lab check rejects the starter code and accepts the solution, run in a real kernel."""
from __future__ import annotations

import bisect
import json
import math
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stack import get_stack
from stack.lab import check, progress, registry, solve, start
from stack.lab.make_labs import main as make_labs

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))


def run_notebook(path: Path, progress_file: Path) -> dict:
    """Execute a notebook in a fresh kernel; return the progress it recorded."""
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("SCALELAB_PROGRESS")
    os.environ["SCALELAB_PROGRESS"] = str(progress_file)   # the kernel inherits it
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ["SCALELAB_PROGRESS"] = previous or ""
    return json.loads(progress_file.read_text())["checks"]


def lab_checks(lab_file: str) -> set[str]:
    lab = "lab" + lab_file[:2]
    return {name for name, spec in registry().items() if spec.lab == lab}


def test_labs_are_generated_from_the_solutions():
    assert make_labs(["--check"]) == 0


def test_every_lab_has_at_least_four_checks_with_hint_ladders():
    assert LABS, "no labs found"
    for lab in LABS:
        checks = lab_checks(lab)
        assert len(checks) >= 4, (lab, checks)
        text = (ROOT / "labs" / lab).read_text()
        for name in checks:
            assert f'check(\\"{name}\\"' in text, f"{lab} never runs check {name!r}"
            assert len(registry()[name].hints) >= 2


@pytest.mark.parametrize("lab", LABS)
def test_starter_is_rejected_by_every_check(lab, tmp_path):
    recorded = run_notebook(ROOT / "labs" / lab, tmp_path / "progress.json")
    for name in lab_checks(lab):
        assert recorded[name]["attempts"] >= 1, f"{name} was never checked"
        assert recorded[name]["passed"] is False, f"{name} accepted the starter code"


@pytest.mark.parametrize("lab", LABS)
def test_solution_passes_every_check(lab, tmp_path):
    recorded = run_notebook(ROOT / "solutions" / lab, tmp_path / "progress.json")
    for name in lab_checks(lab):
        assert recorded[name]["passed"] is True, f"{name} rejected the solution"


# -- plausible wrong answers: every one is rejected, with a message that helps -------------

def _unsorted(samples, p):
    return samples[max(1, math.ceil(p / 100 * len(samples))) - 1]


def _sorts_in_place(samples, p):
    samples.sort()
    return samples[max(1, math.ceil(p / 100 * len(samples))) - 1]


def _ring_class(label=None, one_point=False, zero_based=False, wrap=True):
    """A consistent-hash ring with one plausible mistake."""
    from stack.shardmap import key_hash, vnode_label
    label = label or vnode_label

    class Ring:
        def __init__(self, count, vnodes=64):
            shards = range(0, count) if zero_based else range(1, count + 1)
            points = sorted((key_hash(label(s, v)), s) for s in shards for v in range(1 if one_point else vnodes))
            self.hashes, self.owners = [h for h, _ in points], [o for _, o in points]

        def shard_for(self, key):
            i = bisect.bisect_left(self.hashes, key_hash(key))
            return self.owners[i % len(self.owners)] if wrap else self.owners[i]
    return Ring


def _right_ring():
    return _ring_class()


LABEL_DASH_RING = _ring_class(label=lambda s, v: f"shard-{s}-{v}")


def _hash_mod(u, n):
    from stack.shardmap import key_hash
    return key_hash(u) % n


def _hash_mod_n1(u, n):
    from stack.shardmap import key_hash
    return key_hash(u) % (n + 1) + 1


# (check, wrong answer, why it is plausible, True when the check should recognise the mistake)
WRONG_ANSWERS = [
    ("shard_for", _hash_mod, "forgot the +1 (shards count from 1)", True),
    ("shard_for", lambda u, n: u % n + 1, "modulo of the id, no hash", True),
    ("shard_for", _hash_mod_n1, "divided by n + 1", True),
    ("shard_for", lambda u, n: 1, "everything on the first shard", False),
    ("hash_ring", LABEL_DASH_RING, "labelled the points shard-s-v", True),
    ("hash_ring", _ring_class(one_point=True), "one point per shard", True),
    ("hash_ring", _ring_class(zero_based=True), "shards 0 .. count - 1", True),
    ("hash_ring", _ring_class(wrap=False), "no wrap-around past the last point", False),
    ("moved_share", lambda s, n: 1 / (n + 1), "1/(n+1) for modulo too", True),
    ("moved_share", lambda s, n: n / (n + 1), "n/(n+1) for the ring too", True),
    ("moved_share", lambda s, n: 1 / n if s != "modulo" else n / (n + 1), "the fair share of n, not n + 1", True),
    ("moved_share", lambda s, n: (n - 1) / n if s == "modulo" else 1 / (n + 1), "modulo as (n-1)/n", True),
    ("percentile", _unsorted, "forgot to sort", True),
    ("percentile", lambda s, p: sorted(s)[min(len(s) - 1, math.ceil(p / 100 * len(s)))], "rank off by one", True),
    ("percentile", lambda s, p: sorted(s)[max(0, math.floor(p / 100 * len(s)) - 1)], "rounded the rank down", True),
    ("percentile", lambda s, p: sum(s) / len(s), "the mean", True),
    ("percentile", _sorts_in_place, "sorted the caller's list", True),
    ("throughput", lambda spans: len(spans) / sum(e - s for s, e in spans), "divided by busy time", True),
    ("throughput", lambda spans: len(spans) / (max(s for s, _ in spans) - min(s for s, _ in spans)), "window to last start", True),
    ("throughput", lambda spans: len(spans) / max(e for _, e in spans), "window from zero", True),
    ("throughput", lambda spans: 1.5, "copied the worked example's number", False),
    ("littles_law", lambda r, c, s: r * c / s, "ms, not s", True),
    ("littles_law", lambda r, c, s: c / (s / 1000), "forgot the replicas", True),
    ("littles_law", lambda r, c, s: r * c * s / 1000, "upside down", True),
    ("littles_law", lambda r, c, s: 120, "copied the worked example's number", False),
    ("replicas_needed", lambda t, c, s, u: round(t / (c / (s / 1000) * u)), "rounded to nearest", True),
    ("replicas_needed", lambda t, c, s, u: math.floor(t / (c / (s / 1000) * u)) + 1, "floor + 1", True),
    ("replicas_needed", lambda t, c, s, u: math.ceil(t / (c / (s / 1000))), "ignored the cap", True),
    ("replicas_needed", lambda t, c, s, u: math.ceil(t / (c / s * u)), "ms, not s", True),
    ("replicas_needed", lambda t, c, s, u: 3, "the lab's own plan, typed in", False),
    ("cpu_ceiling", lambda cores, ms: 1000 / ms, "forgot the cores", True),
    ("cpu_ceiling", lambda cores, ms: cores * ms / 1000, "upside down", True),
    ("cpu_ceiling", lambda cores, ms: cores / ms, "units", True),
    ("cpu_ceiling", lambda cores, ms: 500, "copied the worked example's number", False),
    ("survive_one_failure", lambda t, p: math.ceil(t / p), "forgot the +1", True),
    ("survive_one_failure", lambda t, p: math.floor(t / p) + 1, "floor + 1", True),
    ("survive_one_failure", lambda t, p: round(t / p) + 1, "round + 1", True),
    ("survive_one_failure", lambda t, p: 2 * math.ceil(t / p), "doubled", True),
]


@pytest.fixture
def own_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_PROGRESS", str(tmp_path / "progress.json"))


@pytest.mark.parametrize("name,answer,why,recognised", WRONG_ANSWERS, ids=[f"{w[0]}: {w[2]}" for w in WRONG_ANSWERS])
def test_plausible_wrong_answers_are_rejected_with_a_hint_that_fits(own_progress, name, answer, why, recognised):
    result = check(name, answer)
    assert not result.passed, f"{name} accepted a wrong answer ({why})"
    assert result.hint and result.message, result
    ladder = registry()[name].hints
    if recognised:     # the hint names this mistake, not just the first rung of the ladder
        assert result.hint not in ladder, (why, result.hint)
    assert all(h != repr(result.expected) for h in ladder)


def test_no_hint_is_the_answer():
    """The last rung is a worked example with other numbers, never the code of the solution."""
    for name, spec in registry().items():
        for text in spec.hints:
            assert "return " not in text, (name, text)


# -- live checks: the verdict follows the measurement -----------------------------------

@pytest.mark.stack
def test_measured_capacity_rejects_a_number_or_a_constant_and_accepts_the_formula(own_progress):
    assert not check("measured_capacity", 400).passed
    constant = check("measured_capacity", lambda r, c, s: 400)
    assert not constant.passed and "same number for every shape" in constant.hint
    ms = check("measured_capacity", lambda r, c, s: r * c / s)
    assert not ms.passed and "1000" in ms.hint
    right = check("measured_capacity", lambda r, c, s: r * c / (s / 1000))
    assert right.passed, right


@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(replicas=4, concurrency=4), False),     # the starting stack, untouched
    (dict(replicas=3, concurrency=4), False),     # 600 req/s, but on 3 replicas
    (dict(replicas=2, concurrency=4), False),     # 2 replicas, slots not raised: 400 req/s
    (dict(replicas=2, concurrency=8), False),     # overshoots: 800 req/s
    (dict(replicas=2, concurrency=6), True),
])
def test_target_capacity_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab01", progress=None)
    get_stack().apply(**shape)
    result = check("target_capacity")
    assert result.passed is passes, result


@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(replicas=2, concurrency=4), False),     # too small: p99 misses the target, measured
    (dict(replicas=4, concurrency=4), False),     # meets it, but 3 would too: over-provisioned
    (dict(replicas=3, concurrency=5), False),     # changed the slots instead of planning replicas
    (dict(replicas=3, concurrency=4), True),
])
def test_capacity_plan_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab02", progress=None)
    get_stack().apply(**shape)
    result = check("capacity_plan")
    assert result.passed is passes, result
    if not passes and shape["replicas"] == 2:
        assert "p99" in result.message and "missed" in result.message


@pytest.mark.stack
def test_solve_applies_the_solution_state_and_counts_as_skipped(own_progress):
    start("lab01", progress=None)
    result = solve("target_capacity", progress=None)
    assert result.passed, result
    assert get_stack().applied().app.replicas == 2
    row = next(r for r in progress().rows if r[1] == "target_capacity")
    assert row[3] is False and row[5] is True       # not passed by the learner: skipped
    with pytest.raises(ValueError, match="only for checks that measure the live stack"):
        solve("percentile")


@pytest.mark.stack
@pytest.mark.parametrize("ring,passes", [(LABEL_DASH_RING, False), (_right_ring(), True)],
                         ids=["a ring labelled differently", "the stack's ring"])
def test_ring_on_stack_reshards_the_live_servers_and_compares_every_row(own_progress, ring, passes):
    start("lab06", progress=None)
    result = check("ring_on_stack", ring)
    assert result.passed is passes, result
    assert "resharded 3 -> 4 servers" in result.message
    assert get_stack().applied().postgres.shards == 3      # the check puts the stack back


@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(), False),                                       # the starting stack: 3 servers on a ring
    (dict(shards=4, shard_scheme="modulo"), False),        # 4 servers, but modulo moves most users
    (dict(shards=4, shard_scheme="consistent"), False),    # 4 servers, a ring: a table to share
    (dict(shards=5, shard_scheme="jump"), False),          # jump, one server too many
    (dict(shards=4, shard_scheme="jump"), True),
])
def test_grown_with_jump_verdict_depends_on_the_live_servers(own_progress, shape, passes):
    start("lab06", progress=None)
    if shape:
        get_stack().apply(**shape)
    result = check("grown_with_jump")
    assert result.passed is passes, result
