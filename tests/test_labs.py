"""Every lab check rejects the starter code and accepts the solution, run in a real kernel."""
from __future__ import annotations

import bisect
import json
import math
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stack import get_stack
from stack.lab import check, progress, registry, solve, start
from stack.lab.checks.lab03 import _all_four as _ip_hash_all_octets
from stack.lab.checks.lab03 import _blocky as _blocky_weighted
from stack.lab.checks.lab03 import _by_count as _ip_hash_by_count
from stack.lab.checks.lab03 import _no_modulo as _ip_hash_no_modulo
from stack.lab.checks.lab03 import _subtracts_own_weight, _ties_to_last
from stack.lab.checks import lab08
from stack.lab.make_labs import main as make_labs

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))


def run_notebook(path: Path, progress_file: Path, shown: dict | None = None) -> dict:
    """Execute a notebook in a fresh kernel; return the progress it recorded. `shown`, when given,
    is filled with what each check's cell displayed ({check name: its outputs' text})."""
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("SCALELAB_PROGRESS")
    os.environ["SCALELAB_PROGRESS"] = str(progress_file)   # the kernel inherits it
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ["SCALELAB_PROGRESS"] = previous or ""
    if shown is not None:
        for cell in nb.cells:
            for name in re.findall(r'\bcheck\(\s*["\'](\w+)["\']', cell.source if cell.cell_type == "code" else ""):
                shown[name] = shown.get(name, "") + "".join(
                    o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))
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


# What a live check must say about the untouched starting stack, as the starter notebook shows it
# (measured there, not again in the verdict tests below); such a check may not be inconclusive.
STARTER_VERDICTS = {"fits_connections": "ran out of room"}


@pytest.mark.parametrize("lab", LABS)
def test_starter_is_rejected_by_every_check(lab, tmp_path):
    shown = {}
    recorded = run_notebook(ROOT / "labs" / lab, tmp_path / "progress.json", shown)
    for name in lab_checks(lab):
        assert recorded[name]["attempts"] >= 1, f"{name} was never checked"
        assert recorded[name]["passed"] is False, f"{name} accepted the starter code"
        # A check that crashed judged nothing (too busy to measure, "inconclusive", is allowed).
        assert recorded[name]["last"] != "error", f"{name} could not run on the starter: {recorded[name]}"
        if name in STARTER_VERDICTS:
            assert recorded[name]["last"] == "fail" and STARTER_VERDICTS[name] in shown.get(name, ""), (name, shown)


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


# -- lab 7's plausible wrong answers: cache-aside written by hand --------------------------

def _aside(store):
    """A cache-aside getter whose populate step is `store(cache, key, text, ttl)`."""
    def get(cache, db, user_id, ttl_s=300):
        key = f"user:{user_id}"
        cached = cache.get(key)
        if cached is not None:
            return json.loads(cached)
        user = db.fetch_user(user_id)
        if user is not None:
            store(cache, key, json.dumps(user), ttl_s)
        return user
    return get


def _wrong_key(cache, db, user_id, ttl_s=300):
    cached = cache.get(f"users:{user_id}")
    if cached is not None:
        return json.loads(cached)
    user = db.fetch_user(user_id)
    if user is not None:
        cache.set(f"users:{user_id}", json.dumps(user), ex=ttl_s)
    return user


def _never_reads_cache(cache, db, user_id, ttl_s=300):
    user = db.fetch_user(user_id)
    if user is not None:
        cache.set(f"user:{user_id}", json.dumps(user), ex=ttl_s)
    return user


def _raw_hit(cache, db, user_id, ttl_s=300):
    cached = cache.get(f"user:{user_id}")
    if cached is not None:
        return cached
    return _never_reads_cache(cache, db, user_id, ttl_s)


def _delete_then_write(cache, db, user_id, fields):
    cache.delete(f"user:{user_id}")
    db.update_user(user_id, **fields)


def _lock_then_give_up(cache, db, user_id, ttl_s=300):
    key = f"user:{user_id}"
    cached = cache.get(key)
    if cached is not None:
        return json.loads(cached)
    if not cache.set(f"lock:{key}", "1", nx=True, px=2000):
        return None
    try:
        return _aside(lambda c, k, v, t: c.set(k, v, ex=t))(cache, db, user_id, ttl_s)
    finally:
        cache.delete(f"lock:{key}")


def _lock_without_expiry(cache, db, user_id, ttl_s=300):
    import time
    key = f"user:{user_id}"
    while True:
        cached = cache.get(key)
        if cached is not None:
            return json.loads(cached)
        if cache.set(f"lock:{key}", "1", nx=True):
            try:
                return _aside(lambda c, k, v, t: c.set(k, v, ex=t))(cache, db, user_id, ttl_s)
            finally:
                cache.delete(f"lock:{key}")
        time.sleep(0.01)


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
    ("cache_aside", _aside(lambda c, k, v, t: c.set(k, v)), "no TTL", True),
    ("cache_aside", _aside(lambda c, k, v, t: c.set(k, v, px=t)), "TTL in ms", True),
    ("cache_aside", _wrong_key, "key users:{id}", True),
    ("cache_aside", _never_reads_cache, "always asks the database", True),
    ("cache_aside", _raw_hit, "returns the JSON text on a hit", True),
    ("invalidate_on_write", _delete_then_write, "deletes before the write", True),
    ("invalidate_on_write", lambda c, db, uid, f: db.update_user(uid, **f), "never invalidates", True),
    ("invalidate_on_write", lambda c, db, uid, f: c.delete(f"user:{uid}"), "forgot the database", True),
    ("single_flight", _aside(lambda c, k, v, t: c.set(k, v, ex=t)), "plain cache-aside", True),
    ("single_flight", _lock_then_give_up, "losers return None", True),
    ("single_flight", _lock_without_expiry, "lock without expiry", True),
    ("hit_ratio", lambda r, t: 1 - 1 / (r * t), "no +1", True),
    ("hit_ratio", lambda r, t: t / (t + 1), "ignored the rate", True),
    ("hit_ratio", lambda r, t: r * t / (r * t + 2), "two misses per cycle", True),
    ("hit_ratio", lambda r, t: 8 / 9, "copied the worked example's number", False),
    ("route", lambda q: "replica", "everything to the replica", True),
    ("route", lambda q: "replica" if q.startswith("SELECT") else "primary", "case-sensitive keyword", True),
    ("route", lambda q: "replica" if q.strip().lower().startswith("select") else "primary", "forgot FOR UPDATE", True),
    ("route", lambda q: "primary", "everything to the primary", False),
    ("read_target", lambda w, r: "replica" if w is None or r >= w else "primary", "compared LSNs as text", True),
    ("read_target", lambda w, r: "replica" if w is None or int(r.split("/")[0], 16) * 2**32 + int(r.split("/")[1], 16)
     > int(w.split("/")[0], 16) * 2**32 + int(w.split("/")[1], 16) else "primary", "strictly greater", True),
    ("read_target", lambda w, r: "replica" if w is None or int(r.split("/")[1], 16) >= int(w.split("/")[1], 16)
     else "primary", "ignored the high part", True),
    ("read_target", lambda w, r: "replica" if w is None or int(r.replace("/", ""), 16) >= int(w.replace("/", ""), 16)
     else "primary", "removed the slash", True),
    ("read_target", lambda w, r: "primary" if w is not None else "replica", "primary after any write", False),
    # lab 5
    ("pool_size", lambda r, q, n, h: math.ceil(r * q / n * h), "ms, not s", True),
    ("pool_size", lambda r, q, n, h: math.ceil(r * q / 1000 * h), "forgot the replicas", True),
    ("pool_size", lambda r, q, n, h: math.ceil(r * q / 1000 / n), "no headroom", True),
    ("pool_size", lambda r, q, n, h: round(r * q / 1000 / n * h), "rounded to the nearest", True),
    ("pool_size", lambda r, q, n, h: 5, "copied the worked example's number", False),
    ("max_pool", lambda m, n, o: m // n, "forgot the other connections", True),
    ("max_pool", lambda m, n, o: math.ceil((m - o) / n), "rounded up", True),
    ("max_pool", lambda m, n, o: (m - o) / n, "a fraction of a connection", True),
    ("max_pool", lambda m, n, o: m // n - o, "subtracted the others per replica", True),
    ("server_connections", lambda n, w, r, b: {"primary": n * w, "replica": n * r}, "ignored PgBouncer", True),
    ("server_connections", lambda n, w, r, b: {"primary": n * w if b is None else b, "replica": n * r},
     "PgBouncer always opens its whole pool", True),
    ("server_connections", lambda n, w, r, b: {"primary": n * w if b is None else n * b, "replica": n * r},
     "a PgBouncer pool per replica", True),
    ("server_connections", lambda n, w, r, b: {"primary": n * w if b is None else min(b, n * w), "replica": r},
     "one read pool for all replicas", True),
    # lab 3
    ("round_robin", lambda r, n: [i % r for i in range(n)], "numbered from 0", True),
    ("round_robin", lambda r, n: [(i + 1) % r + 1 for i in range(n)], "starts one further on", True),
    ("round_robin", lambda r, n: [i % r + 1 for i in range(n - 1)], "one pick short", True),
    ("round_robin", lambda r, n: [min(i + 1, r) for i in range(n)], "never wraps around", True),
    ("smooth_weighted_round_robin", _blocky_weighted, "each replica's weight in a row", True),
    ("smooth_weighted_round_robin", _ties_to_last, "ties to the last replica", True),
    ("smooth_weighted_round_robin", _subtracts_own_weight, "winner gives back its own weight", True),
    ("smooth_weighted_round_robin", lambda w, n: [i % len(w) + 1 for i in range(n)], "ignores the weights", True),
    ("smooth_weighted_round_robin", lambda w, n: [1, 2, 1], "copied the worked example's picks", False),
    ("least_connections", lambda c, w=None: c.index(max(c)) + 1, "the busiest", True),
    ("least_connections", lambda c, w=None: c.index(min(c)) + 1, "ignores the weights", True),
    ("least_connections", lambda c, w=None: min(range(len(c)), key=lambda i: c[i] * (w or [1] * len(c))[i]) + 1,
     "multiplied by the weight", True),
    ("least_connections", lambda c, w=None: c.index(min(c)), "numbered from 0", False),
    ("ip_hash", _ip_hash_all_octets, "hashed all four octets", True),
    ("ip_hash", _ip_hash_by_count, "modulo the replica count, not the total weight", True),
    ("ip_hash", _ip_hash_no_modulo, "never reduced modulo 6271", True),
    ("ip_hash", lambda a, w: int(a.split(".")[2]) % len(w) + 1, "third octet modulo the replicas", False),
    ("replica_shares", lab08._shares_counting_dashes, "counted nginx's own answers", True),
    ("replica_shares", lab08._counts, "counts, not shares", True),
    ("replica_shares", lab08._by_client, "grouped by client address", True),
    ("replica_shares", lambda lines: {"127.0.0.1:9001": 0.75, "127.0.0.1:9002": 0.25}, "a constant", False),
    ("slowest_layer", lab08._with_total, "counted total as a layer", True),
    ("slowest_layer", lab08._largest_single, "the slowest single request", True),
    ("slowest_layer", lab08._first_header_only, "read only the first header", True),
    ("slowest_layer", lambda headers: "db", "always the database", False),
    ("heaviest_statement", lambda rows: max(rows, key=lambda r: r["mean_ms"])["query"], "by mean", True),
    ("heaviest_statement", lambda rows: max(rows, key=lambda r: r["calls"])["query"], "by calls", True),
    ("heaviest_statement", lambda rows: min(rows, key=lambda r: r["total_ms"])["query"], "the lightest", True),
    ("diagnosis", "app_capacity", "the slot queue, a consequence", True),
    ("diagnosis", "database_cpu", "db time blamed on PostgreSQL", True),
    ("diagnosis", "cache", "the short TTL decoy", True),
    ("diagnosis", "balancing", "the random_two decoy", True),
    ("diagnosis", "the pool", "not one of the causes", True),
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


# The live checks' verdicts on other stacks than the lab's two: the untouched starting stack is
# measured by test_starter_is_rejected_by_every_check (the starter notebook checks it as it is,
# and STARTER_VERDICTS says what it must say), and
# the solution's stack by test_solution_passes_every_check; the cases below are the plausible wrong
# shapes in between (measuring those two again here cost about a minute of every `make test`).
@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(replicas=3, concurrency=4), False),     # 600 req/s, but on 3 replicas
    (dict(replicas=2, concurrency=4), False),     # 2 replicas, slots not raised: 400 req/s
    (dict(replicas=2, concurrency=8), False),     # overshoots: 800 req/s
])
def test_target_capacity_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab01", progress=None)
    get_stack().apply(**shape)
    result = check("target_capacity")
    assert result.passed is passes, result


@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(replicas=4, concurrency=4), False),     # meets it, but 3 would too: over-provisioned
    (dict(replicas=3, concurrency=5), False),     # changed the slots instead of planning replicas
])
def test_capacity_plan_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab02", progress=None)
    get_stack().apply(**shape)
    result = check("capacity_plan")
    assert result.passed is passes, result
    if shape["replicas"] == 4:
        assert "over-provisions" in result.message, result


@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(strategy="round_robin", weights=(2, 1, 1, 1)), False),         # 40%
    (dict(strategy="least_conn", weights=(3, 1, 1, 1)), False),          # weights bend at light load: ~37%
    (dict(strategy="ip_hash"), False),                                  # one client: one replica takes all
    (dict(replicas=2, strategy="round_robin"), False),                  # 50%, but two replicas out of service
])
def test_half_to_app1_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab03", progress=None)
    get_stack().apply(**shape)
    result = check("half_to_app1")
    assert result.passed is passes, result
    if shape.get("strategy") == "least_conn":
        assert "least_conn" in result.hint


@pytest.mark.stack
def test_live_picker_checks_compare_with_nginx_and_reject_wrong_pickers(own_progress):
    from stack.lab.checks.lab03 import reference_ip_hash, reference_smooth_weighted
    start("lab03", progress=None)
    assert not check("nginx_split", [1, 2, 1]).passed
    blocky = check("nginx_split", _blocky_weighted)
    assert not blocky.passed and "in a row" in blocky.hint, blocky
    # Again and again, as a learner re-runs the cell: each must start nginx's round-robin afresh
    # (the same weights twice in a row used to continue mid-cycle and fail a right answer).
    for _ in range(5):
        result = check("nginx_split", reference_smooth_weighted)
        assert result.passed, result
    shifted = check("nginx_ip_hash", lambda a, w: reference_ip_hash(a, w) % len(w) + 1)   # always one off
    assert not shifted.passed and "predicted 0 of" in shifted.message, shifted
    right = check("nginx_ip_hash", reference_ip_hash)
    assert right.passed, right


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
@pytest.mark.parametrize("ttl,passes", [
    (0, False),      # caching off: every read is a lookup (300/s)
    (1, False),      # ~75 lookups/s: over the budget
    (60, False),     # within the budget, but data up to 60 s stale
])
def test_ttl_budget_verdict_depends_on_the_live_stack(own_progress, ttl, passes):
    start("lab07", progress=None)
    get_stack().apply(ttl_s=ttl)
    result = check("ttl_budget")
    assert result.passed is passes, result


# -- lab 4: the router and the app's consistency, on the live pair -------------------------

class _AlwaysReplica:
    def __init__(self, primary, replica):
        self.primary, self.replica = primary, replica

    def write(self, client, sql, params=()):
        return self.primary.execute(sql, params).fetchone()

    def read(self, client, sql, params=()):
        return self.replica.execute(sql, params).fetchone()


class _AlwaysPrimary(_AlwaysReplica):
    def read(self, client, sql, params=()):
        return self.primary.execute(sql, params).fetchone()


class _StickyForever(_AlwaysReplica):
    """After a write, the client reads the primary for ever."""
    def __init__(self, primary, replica):
        super().__init__(primary, replica)
        self.wrote = set()

    def write(self, client, sql, params=()):
        self.wrote.add(client)
        return super().write(client, sql, params)

    def read(self, client, sql, params=()):
        conn = self.primary if client in self.wrote else self.replica
        return conn.execute(sql, params).fetchone()


def _window(seconds):
    import time

    class Window(_AlwaysReplica):
        def __init__(self, primary, replica):
            super().__init__(primary, replica)
            self.at = {}

        def write(self, client, sql, params=()):
            self.at[client] = time.monotonic()
            return super().write(client, sql, params)

        def read(self, client, sql, params=()):
            recent = time.monotonic() - self.at.get(client, -1e9) < seconds
            return (self.primary if recent else self.replica).execute(sql, params).fetchone()
    return Window


@pytest.mark.stack
@pytest.mark.parametrize("router,why", [
    (_AlwaysReplica, "no guarantee: stale reads"),
    (_AlwaysPrimary, "every read on the primary"),
    (_StickyForever, "never back to the replica"),
    (_window(0.1), "a window shorter than the lag"),
    (_window(1.0), "a window longer than needed"),
])
def test_rw_router_rejects_routers_that_break_the_guarantee_or_waste_the_replica(own_progress, router, why):
    start("lab04", progress=None)
    result = check("rw_router", router)
    assert not result.passed, (why, result)
    assert result.hint and result.hint not in registry()["rw_router"].hints, (why, result)


@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(read_from="primary"), False),                                   # consistent, but no replica reads
    (dict(synchronous_commit="remote_write"), False),                     # received, not applied: still stale
    (dict(replica_delay_ms=0), False),                                    # removed the lag instead of fixing it
    (dict(synchronous_commit="remote_apply"), True),
])
def test_consistent_reads_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab04", progress=None)
    get_stack().apply(**shape)
    try:
        result = check("consistent_reads")
    finally:
        get_stack().apply(synchronous_commit="on")
    assert result.passed is passes, result


# -- lab 6: shards on the live servers ------------------------------------------------------

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
    (dict(shards=4, shard_scheme="modulo"), False),        # 4 servers, but modulo moves most users
    (dict(shards=4, shard_scheme="consistent"), False),    # 4 servers, a ring: a table to share
    (dict(shards=5, shard_scheme="jump"), False),          # jump, one server too many
    (dict(shards=4, shard_scheme="jump"), True),
])
def test_grown_with_jump_verdict_depends_on_the_live_servers(own_progress, shape, passes):
    start("lab06", progress=None)
    get_stack().apply(**shape)
    result = check("grown_with_jump")
    assert result.passed is passes, result


# -- lab 8: the mystery stack ---------------------------------------------------------------

@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(ttl_s=300, strategy="least_conn"), False),          # two plausible changes, the bottleneck stays
    # Everything back to the defaults (but the replica count: scaling up could meet a port a
    # client connection holds when the test port block sits in the ephemeral range).
    (dict(read_pool=40, strategy="least_conn", ttl_s=300, pool_size=20), False),
])
def test_fixed_stack_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab08", progress=None)
    if shape:
        get_stack().apply(**shape)
    result = check("fixed_stack")
    assert result.passed is passes, result
    if len(shape) > 2:
        assert "changed 4 settings" in result.message


@pytest.mark.stack
def test_a_diagnosis_counts_only_before_the_fix(own_progress):
    start("lab08", progress=None)
    assert check("diagnosis", "db_pool").passed
    get_stack().apply(read_pool=40)
    late = check("diagnosis", "db_pool")
    assert not late.passed and "reset()" in late.hint


# -- lab 5: the pools fit the servers' limit under a rush and serve the steady load ------------------

@pytest.mark.stack
@pytest.mark.parametrize("shape,passes", [
    (dict(read_pool=10), False),                                        # reads fit, writes still fill the primary
    ({"pgbouncer.enabled": True}, False),                               # writes fit, read pools of 40 fill the replica
    ({"read_pool": 2, "pgbouncer.enabled": True}, False),               # fits, but too small for the load
    ({"read_pool": 8, "max_connections": 400}, False),                  # raised the limit instead
])
def test_fits_connections_verdict_depends_on_the_live_stack(own_progress, shape, passes):
    start("lab05", progress=None)
    get_stack().apply(**shape)
    result = check("fits_connections")
    assert not result.message.startswith("Inconclusive"), result
    assert result.passed is passes, result
    # A server filled by the rush decides the verdict: the steady load is not run (and not waited for).
    assert ("ran out of room" in result.message) == ("not run (the rush had decided)" in result.message), result


def test_a_check_whose_own_code_crashes_is_recorded_as_an_error_not_a_rejection(own_progress):
    from stack.course.progress_store import load
    from stack.lab.checker import _judge
    from stack.lab.registry import Check
    from stack.topology import Topology
    broken = Check("broken_check", "lab00", "a check with a bug", run=lambda: Topology().with_changes(replicas=0))
    result = _judge(broken, ())
    assert not result.passed and result.message.startswith("The check could not run: TopologyError")
    assert load()["checks"]["broken_check"]["last"] == "error"
