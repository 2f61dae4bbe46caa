"""Lab 7: cache-aside written by the learner, run against the live Redis and PostgreSQL.

The function checks call the learner's code with a real Redis client and a `LabDB`
(user lookups on the primary, counted by PostgreSQL's pg_stat_statements), and judge
what the servers then hold and count: the key and its TTL in Redis, the lookups
PostgreSQL ran. The hint names the mistake the servers revealed.
"""
from __future__ import annotations

import json
import threading

from ...course.predictions import as_predicted
from ..registry import Verdict, check_definition
from ... import quiet
from ._cases import first_mismatch

LAB = "lab07"


def _clients(cost_ms: float = 0.0):
    from ...course import caching, servers
    from ._live import learner_stack
    stack = learner_stack()
    return stack, servers.redis_client(stack), caching.LabDB(stack, cost_ms=cost_ms)


def _user_name(value) -> str | None:
    """The name inside whatever the learner cached (JSON of the user, or of a wrapper holding it)."""
    try:
        data = json.loads(value)
    except (TypeError, ValueError):
        return None
    if isinstance(data, dict) and "user" in data and isinstance(data["user"], dict):
        data = data["user"]
    return data.get("name") if isinstance(data, dict) else None


# -- 1. cache-aside ------------------------------------------------------------------------

@check_definition("cache_aside", LAB, "cache-aside with a TTL, against the live Redis and PostgreSQL", hints=(
    "Three steps: look in Redis under the user's key; on a hit, decode it and hand it back; on a miss, ask "
    "the database, store its answer with an expiry, and hand that back.",
    "The key is the word user, a colon and the id. Store JSON text (json.dumps) and give SET an expiry "
    "in seconds (ex=...); a missing user is returned as None.",
    "Worked example with other names: product 12 with a 60 s TTL: GET product:12 -> nothing -> query the "
    "products table -> SET product:12 '{...}' EX 60 -> the next GET finds it, and the database is not asked.",
), needs_stack=True)
@quiet.measurement      # timed against the live servers: the machine to itself in a parallel test run
def check_cache_aside(fn):
    if not callable(fn):
        return Verdict(False, "a function", fn, "Pass the function itself (no parentheses).")
    stack, cache, db = _clients()
    uid, ttl = 4242, 120
    cache.delete(f"user:{uid}")
    before = db.lookups()
    first = fn(cache, db, uid, ttl)
    after_first = db.lookups()
    second = fn(cache, db, uid, ttl)
    after_second = db.lookups()
    others = sorted(k for k in cache.scan_iter(match=f"*{uid}*") if k != f"user:{uid}")
    expected = db.fetch_user(uid)
    if not isinstance(first, dict) or first.get("id") != uid or first.get("name") != expected["name"]:
        return Verdict(False, expected, first, f"The first call for user {uid} did not return the user's row.")
    if not cache.exists(f"user:{uid}"):
        hint = (f"You cached it under {others[0]!r}: the app and the lesson use user:{{id}}." if others
                else "Nothing was stored: on a miss, SET the key after reading the database.")
        return Verdict(False, f"key user:{uid} in Redis", others or "no key", f"Redis holds no user:{uid} key.",
                       hint=hint)
    remaining = cache.ttl(f"user:{uid}")
    if remaining == -1:
        return Verdict(False, f"a TTL of {ttl} s", "no expiry (TTL -1)", "Redis says the key never expires.",
                       hint="Without an expiry a changed row is served forever: pass ex=ttl_s to SET.")
    if not ttl - 5 <= remaining <= ttl:
        return Verdict(False, f"a TTL of {ttl} s", f"{remaining} s", f"Redis reports a TTL of {remaining} s.",
                       hint="Units: ex= takes seconds and px= milliseconds; ttl_s is in seconds.")
    if after_first - before != 1:
        return Verdict(False, "1 lookup at PostgreSQL on a miss", after_first - before,
                       f"PostgreSQL ran {after_first - before} lookups for one miss.")
    if after_second != after_first:
        return Verdict(False, "0 lookups on a hit", after_second - after_first,
                       "The second call reached PostgreSQL although the key was cached.",
                       hint="Read the cache first, and return what it holds when the key is there.")
    if second != first:
        return Verdict(False, first, second, "A hit returned something other than what the miss returned.",
                       hint="Decode what you stored (json.loads) so a hit returns the same dict as a miss.")
    missing = fn(cache, db, 99_999_999, ttl)
    if missing is not None:
        return Verdict(False, None, missing, "A user that does not exist should come back as None.")
    return Verdict(True, detail=f"PostgreSQL counted 1 lookup for a miss and 0 for the hit; Redis holds "
                                f"user:{uid} with {remaining} s to live.")


# -- 2. invalidation on write --------------------------------------------------------------

class _RacingDB:
    """The lab's DB, with a concurrent reader that runs just before each UPDATE reaches PostgreSQL."""

    def __init__(self, db, cache):
        self.db, self.cache = db, cache
        self.updates = 0
        self.raced = False          # the reader found no key and cached the old row

    def fetch_user(self, user_id):
        return self.db.fetch_user(user_id)

    def update_user(self, user_id, **fields):
        key = f"user:{user_id}"
        if self.cache.get(key) is None:     # a reader misses now and caches what the DB still holds
            self.raced = True
            self.cache.set(key, json.dumps(self.db.fetch_user(user_id)), ex=300)
        self.updates += 1
        self.db.update_user(user_id, **fields)


@check_definition("invalidate_on_write", LAB, "a write that leaves no stale copy in the cache", hints=(
    "After a write, the cached copy is wrong. Either remove it, so the next read fetches the new row, or "
    "replace it with the new row; and only once the database has the new value.",
    "Write to the database first, then delete the key. Deleting first leaves a gap in which a reader misses, "
    "reads the old row and caches it again.",
    "Worked example with other names: renaming product 12: UPDATE products ... (committed), then DEL product:12; "
    "the next GET product:12 misses and caches the new name.",
), needs_stack=True)
@quiet.measurement      # timed against the live servers: the machine to itself in a parallel test run
def check_invalidate_on_write(fn):
    if not callable(fn):
        return Verdict(False, "a function", fn, "Pass the function itself (no parentheses).")
    stack, cache, db = _clients()
    uid = 4343
    db.update_user(uid, name="lab7-before")
    cache.set(f"user:{uid}", json.dumps(db.fetch_user(uid)), ex=300)      # cached, as after a read
    racing = _RacingDB(db, cache)
    fn(cache, racing, uid, {"name": "lab7-after"})
    in_db = db.fetch_user(uid)["name"]
    cached = cache.get(f"user:{uid}")
    if racing.updates == 0 or in_db != "lab7-after":
        return Verdict(False, "the database updated", in_db, "PostgreSQL still has the old name.",
                       hint="Write through db.update_user(user_id, **fields) first.")
    if cached is not None and _user_name(cached) != "lab7-after":
        hint = None
        if racing.raced:
            hint = ("A reader that ran between your delete and your UPDATE cached the old row again: "
                    "delete after the write, not before.")
        return Verdict(False, "no stale copy in Redis", f"Redis holds name={_user_name(cached)!r}",
                       "After your write, Redis still serves the old name.", hint=hint or
                       "The old copy stays until its TTL runs out: remove the key after writing.")
    return Verdict(True, detail="After your write, with a reader racing it, Redis holds no stale copy.")


# -- 3. stampede protection --------------------------------------------------------------

STAMPEDE = {"clients": 16, "cost_ms": 100, "ttl_s": 60}


@check_definition("single_flight", LAB, "16 simultaneous misses on one key reach PostgreSQL once", hints=(
    "When many callers miss the same key at once, let one of them fetch; the others wait until the cache "
    "has the value, then read it.",
    "An atomic 'set if not exists' with an expiry (SET lock:KEY 1 NX PX ...) elects the one that fetches; the "
    "losers poll the cache briefly. The expiry frees the lock if its holder dies. A caller that wins the lock "
    "looks in the cache once more before it queries: the last holder may have filled it a moment ago.",
    "Worked example with other numbers: 40 callers miss product:12 whose query takes 200 ms: one wins SET NX, "
    "queries, fills the cache and deletes its lock; the other 39 poll every 10 ms and find the value after "
    "about 200 ms. PostgreSQL counts 1 query instead of 40.",
), needs_stack=True)
@quiet.measurement      # timed against the live servers: the machine to itself in a parallel test run
def check_single_flight(fn):
    if not callable(fn):
        return Verdict(False, "a function", fn, "Pass the function itself (no parentheses).")
    s = STAMPEDE
    stack, cache, db = _clients(cost_ms=s["cost_ms"])
    uid = 4444
    for k in cache.scan_iter(match=f"*{uid}*"):
        cache.delete(k)
    results, errors = [], []
    gate = threading.Barrier(s["clients"])

    def caller():
        try:
            gate.wait()
            results.append(fn(cache, db, uid, s["ttl_s"]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=caller, daemon=True) for _ in range(s["clients"])]
    stuck: list[str] = []          # keys other than the user's that had no expiry while callers ran

    def watch():
        while any(t.is_alive() for t in threads):
            stuck.extend(k for k in cache.scan_iter(match=f"*{uid}*")
                         if k != f"user:{uid}" and cache.ttl(k) == -1)
            if stuck:
                return
    before = db.lookups()
    for t in threads:
        t.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for t in threads:
        t.join(timeout=10)
    watcher.join(timeout=1)
    lookups = db.lookups() - before
    if any(t.is_alive() for t in threads):
        return Verdict(False, "every caller answered", "callers still waiting after 10 s",
                       "Some callers never returned.",
                       hint="Waiters must stop waiting once the value is cached (or after a deadline).")
    if errors:
        return Verdict(False, "no exception", f"{type(errors[0]).__name__}: {errors[0]}",
                       f"{len(errors)} of {s['clients']} callers raised.")
    got = [r.get("id") if isinstance(r, dict) else r for r in results]
    if got.count(uid) != s["clients"]:
        return Verdict(False, f"user {uid} for all {s['clients']} callers", got,
                       f"{s['clients'] - got.count(uid)} callers got no user.",
                       hint="Callers that lose the race must wait for the cache to fill, not give up with None.")
    if lookups > 2:
        return Verdict(False, "1 lookup at PostgreSQL (2 at most)", lookups,
                       f"{s['clients']} callers missed at once and PostgreSQL ran {lookups} lookups.",
                       hint=None if lookups < s["clients"] else
                       "Every caller went to the database: plain cache-aside. Let one fetch, the rest wait.")
    if stuck:
        return Verdict(False, "a lock that expires", f"{stuck[0]!r} with no TTL",
                       "A key you used as a lock has no expiry.",
                       hint="If the holder crashed, a lock without expiry would block this user forever: "
                            "give it px=... or ex=...")
    return Verdict(True, detail=f"{s['clients']} simultaneous misses, {lookups} lookup(s) counted by PostgreSQL, "
                                f"every caller got user {uid}.")


# -- 4. hit ratio from rate and TTL ----------------------------------------------------

def reference_hit_ratio(rate_per_s, ttl_s):
    n = rate_per_s * ttl_s
    return n / (n + 1)


HIT_TURNS = (
    (lambda r, t: 1 - 1 / (r * t), "That counts a miss per TTL but no time to the next request: "
                                   "each cycle has the reads during the TTL plus the one miss that starts it."),
    (lambda r, t: (r * t) / (r * t + 1) if t < 100 else (r * t / 1000) / (r * t / 1000 + 1),
     "Units: keep the TTL in seconds when the rate is per second."),
    (lambda r, t: t / (t + 1), "The rate matters: a rarely read key expires before anyone asks again."),
    (lambda r, t: r * t / (r * t + 2), "One miss per cycle, not two: the miss fills the key."),
)


@check_definition("hit_ratio", LAB, "steady-state hit ratio of one key from its read rate and TTL", hints=(
    "Follow one key through a cycle: a miss fills it; it then answers every read until it expires; the next "
    "read misses again.",
    "Reads during one TTL: rate times TTL, all hits. Misses per cycle: one. The ratio is hits over all reads "
    "in the cycle.",
    "Worked example with other numbers: 4 reads/s and a 2 s TTL: 8 hits per cycle and 1 miss, so 8/9 = 0.89.",
))
def check_hit_ratio(fn):
    cases = [(2, 5), (0.5, 2), (0.1, 1), (10, 0.5), (3, 300)]
    return first_mismatch(fn, cases, reference_hit_ratio, wrong_turns=HIT_TURNS,
                          describe=lambda a: f"rate_per_s={a[0]}, ttl_s={a[1]}")


# -- 5. the stack's TTL, sized from a budget (stack state) --------------------------------

BUDGET = {"rate": 300, "users": 100, "max_lookups_per_s": 50, "max_stale_s": 10, "warm_s": 2.0,
          "seconds": 3.0}
# The verdict allows 10% over the budget: a run is 900 reads, so a count of 45 lookups/s can read as
# ~49 on a busy machine; a TTL of 1 s (the usual undersized answer) measures ~75, far outside.
ALLOWANCE = 1.1


def _measure_lookups(stack):
    from ...course import caching, servers
    caching.flush_cache(stack)
    b = BUDGET
    caching.user_load(stack, b["rate"], b["warm_s"], keys="uniform", key_count=b["users"], seed=70)
    before = servers.user_reads(stack)
    result = caching.user_load(stack, b["rate"], b["seconds"], keys="uniform", key_count=b["users"], seed=71)
    after = servers.user_reads(stack)
    return (sum(after.values()) - sum(before.values())) / b["seconds"], result


@check_definition("ttl_budget", LAB, "a TTL that keeps PostgreSQL within budget and data fresh enough", hints=(
    "Two limits pull the TTL in opposite directions: the database budget wants it long, the freshness "
    "limit wants it short. Any TTL between the two passes.",
    "Lookups per second = reads per second times (1 - hit ratio); each user is read at rate / users per "
    "second; your hit_ratio function turns that and a TTL into a hit ratio.",
    "Worked example with other numbers: 200 reads/s over 50 users (4/s each) and a budget of 20 lookups/s: "
    "the hit ratio must reach 0.9, so 4T/(4T+1) >= 0.9 gives T >= 2.25 s: 3 s passes, if data may be 3 s old.",
), solution_state={"ttl_s": 5})
def check_ttl_budget():
    from ...course import caching, servers
    from ._live import learner_stack
    b = BUDGET
    stack = learner_stack()
    probe = 4545
    cache = servers.redis_client(stack)
    cache.delete(f"user:{probe}")
    caching.http(stack, "GET", f"/users/{probe}")
    ttl = cache.ttl(f"user:{probe}")       # what the app really sets, as Redis reports it
    if ttl < 0:
        return Verdict(False, "the app caching users", "no key in Redis after a read",
                       "After a read through the app, Redis holds no user key: caching is off (TTL 0).",
                       hint="stack.apply(ttl_s=...) with a TTL in seconds.")
    if ttl > b["max_stale_s"]:
        return Verdict(False, f"TTL <= {b['max_stale_s']} s", f"{ttl} s",
                       f"Redis reports keys living {ttl} s: a write behind the cache could be served "
                       f"{ttl} s stale, over the {b['max_stale_s']} s allowed.")
    per_s, result = _measure_lookups(stack)
    seen = (f"TTL {ttl} s (as Redis reports it): PostgreSQL ran {per_s:.1f} user lookups/s under "
            f"{b['rate']} reads/s over {b['users']} users")
    seen += as_predicted("ttl_budget_lookups", " (you predicted {:.0f})")
    if result.error_count:
        return Verdict(False, "no errors", result.error_count, f"{seen}; {result.error_count} requests failed.")
    if per_s > b["max_lookups_per_s"] * ALLOWANCE:
        return Verdict(False, f"<= {b['max_lookups_per_s']} lookups/s", f"{per_s:.1f}",
                       f"{seen}: over the budget.", hint="Too many misses: a longer TTL keeps more answers.")
    return Verdict(True, f"<= {b['max_lookups_per_s']} lookups/s", f"{per_s:.1f}", f"{seen}: within both limits.")
