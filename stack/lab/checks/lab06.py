"""Lab 6: a shard router, a consistent-hash ring, keys moved on resize, and the live shard servers."""
from __future__ import annotations

import functools

from ...shardmap import (jump_shard, key_hash, modulo_shard, ring_shard, vnode_label)
from ..registry import Verdict, check_definition
from ._cases import close, first_mismatch

LAB = "lab06"


# -- 1. the modulo router -------------------------------------------------------------------------

def reference_shard_for(user_id, n):
    return modulo_shard(user_id, n)


ROUTER_TURNS = (
    (lambda u, n: key_hash(u) % n, "Shards are numbered from 1 (postgres-shard-1 ...): the remainder counts from 0."),
    (lambda u, n: u % n + 1, "That spreads by the id itself, not by its hash: use key_hash(user_id)."),
    (lambda u, n: key_hash(u) % (n + 1) + 1, "Divide by the number of shards, n, not n + 1."),
    (lambda u, n: key_hash(str(u) + " ") % n + 1, "Hash exactly str(user_id): key_hash(user_id) does it for you."),
)


@check_definition("shard_for", LAB, "hash-modulo router: which of n shards holds a user", hints=(
    "A router turns a key into a server number the same way in every process: hash the key, then fold "
    "the hash onto the servers.",
    "Take key_hash of the user id, the remainder of dividing it by the number of shards, and shift it "
    "so the first shard is 1.",
    "Worked example with other numbers: if key_hash(7) were 1003 and there were 10 shards, 1003 mod 10 "
    "is 3, so user 7 would live on shard 4.",
))
def check_shard_for(fn):
    cases = [(u, n) for n in (1, 2, 3, 4, 7, 8) for u in (1, 2, 42, 999, 10_000, 123_457)]
    return first_mismatch(fn, cases, reference_shard_for, compare=lambda a, b: a == b, wrong_turns=ROUTER_TURNS,
                          describe=lambda a: f"user_id={a[0]}, n={a[1]}")


# -- 2. the consistent-hash ring --------------------------------------------------------------------

def _ring_call(cls, count, vnodes, key):
    return _instance(cls, count, vnodes).shard_for(key)


@functools.lru_cache(maxsize=64)
def _cached(cls, count, vnodes):
    return cls(count, vnodes)


def _instance(cls, count, vnodes):
    try:
        return _cached(cls, count, vnodes)
    except TypeError:           # an unhashable class: build it each time
        return cls(count, vnodes)


def reference_ring(count, vnodes, key):
    return ring_shard(key, count, vnodes)


def _ring_with(label, count, vnodes, key, right=False):
    import bisect
    points = sorted((key_hash(label(s, v)), s) for s in range(1, count + 1) for v in range(vnodes))
    hashes = [p for p, _ in points]
    i = (bisect.bisect_right if right else bisect.bisect_left)(hashes, key_hash(key))
    return points[i % len(points)][1]


RING_TURNS = (
    (lambda c, v, k: _ring_with(lambda s, i: f"shard-{s}-{i}", c, v, k),
     "Close, but the points are placed by hashing the label shard-<s>#<v> exactly (vnode_label(s, v))."),
    (lambda c, v, k: _ring_with(vnode_label, c, 1, k),
     "Only one point per shard: every shard gets `vnodes` points, vnode_label(s, 0) .. vnode_label(s, vnodes - 1)."),
    (lambda c, v, k: _ring_with(lambda s, i: vnode_label(s - 1, i), c, v, k) - 1,
     "Shards are numbered from 1 (postgres-shard-1 ...): label and answer with 1 .. count, not 0 .. count - 1."),
    (lambda c, v, k: (lambda pts: next((s for p, s in pts if p > key_hash(k)), pts[-1][1]))(
        sorted((key_hash(vnode_label(s, i)), s) for s in range(1, c + 1) for i in range(v))),
     "Past the last point the ring wraps around: the key belongs to the FIRST point, not the last."),
)


@check_definition("hash_ring", LAB, "a consistent-hash ring with virtual nodes", hints=(
    "A ring places several points per shard on the circle of hash values; a key goes to the first point "
    "at or after its own hash, wrapping past the top to the first point.",
    "Build the points once in the constructor: for each shard s (1..count) and each v below vnodes, the "
    "hash of vnode_label(s, v), kept sorted with its shard. Look a key up with bisect_left on the sorted "
    "hashes, and wrap an index equal to the number of points back to 0.",
    "Worked example with other numbers: points at hashes 10 (shard 2), 40 (shard 1), 70 (shard 2). A key "
    "hashing to 40 is shard 1's (at or after), 41 goes to 70 (shard 2), and 90 wraps to 10 (shard 2).",
))
def check_hash_ring(cls):
    if not isinstance(cls, type):
        return Verdict(False, "a class", cls, f"Pass the class itself, HashRing, got {type(cls).__name__}.")
    _cached.cache_clear()
    keys = [1, 2, 3, 42, 777, 5000, 9999, 10_000, 31337]
    cases = [(c, v, k) for c, v in ((1, 8), (2, 1), (3, 16), (4, 64), (5, 64), (8, 32)) for k in keys]
    return first_mismatch(functools.partial(_ring_call, cls), cases, reference_ring, compare=lambda a, b: a == b,
                          wrong_turns=RING_TURNS, describe=lambda a: f"count={a[0]}, vnodes={a[1]}, key={a[2]}")


# -- 3. keys moved when a shard is added -------------------------------------------------------------

def reference_moved_share(scheme, n):
    return n / (n + 1) if scheme == "modulo" else 1 / (n + 1)


MOVED_TURNS = (
    (lambda s, n: 1 / (n + 1), "For modulo, a key stays only when hash mod n equals hash mod (n + 1): most keys move."),
    (lambda s, n: n / (n + 1), "A ring (and jump hash) moves only the keys the new shard takes over: about its fair share."),
    (lambda s, n: 1 / n if s != "modulo" else (n - 1) / n, "The new shard's fair share is of n + 1 shards, not n."),
    (lambda s, n: (n - 1) / n if s == "modulo" else 1 / (n + 1),
     "Modulo: over n x (n + 1) consecutive hashes, exactly n keep their shard. Count the ones that move."),
)


@check_definition("moved_share", LAB, "the share of keys that move from n to n + 1 shards", hints=(
    "A map is good for growing when adding a server moves only the keys the new server must take.",
    "Consistent hashing and jump hash: the new server takes its fair share of all keys, one (n + 1)-th. "
    "Modulo: a key stays only if its remainders by n and by n + 1 agree, which happens for n hashes out "
    "of every n x (n + 1).",
    "Worked example with other numbers: from 9 to 10 shards, a ring moves about 1/10 of the keys and "
    "modulo keeps only 9 of every 90, so it moves 81 of 90, 90%.",
))
def check_moved_share(fn):
    cases = [(s, n) for s in ("modulo", "consistent", "jump") for n in (1, 2, 3, 4, 7)]
    return first_mismatch(fn, cases, reference_moved_share, compare=lambda a, b: close(a, b, 1e-9),
                          wrong_turns=MOVED_TURNS, describe=lambda a: f"scheme={a[0]!r}, n={a[1]}")


# -- 4. the live servers, resharded with the learner's ring -------------------------------------------

def _rows_on_servers(stack, count):
    from ... import resharding
    return resharding.ids_by_shard(stack, count)


@check_definition("ring_on_stack", LAB, "reshard the live stack and find every row where your ring says", hints=(
    "The stack routes by a ring built exactly like the one you wrote: if yours is right, the servers "
    "agree with it row by row after any reshard.",
    "Pass your class: the check adds one shard server to the live stack (consistent scheme, online), asks "
    "every server which users it holds, and compares each with HashRing(count, 64).shard_for(user id).",
    "Worked example with other numbers: after a reshard to 6 servers, a user found on postgres-shard-2 "
    "must give 2 from HashRing(6, 64).shard_for(that id); a single user elsewhere fails the check.",
), needs_stack=True)
def check_ring_on_stack(cls):
    from ._live import learner_stack
    if not isinstance(cls, type):
        return Verdict(False, "a class", cls, f"Pass the class itself, HashRing, got {type(cls).__name__}.")
    stack = learner_stack()
    spec = stack.applied().postgres
    n = spec.shards if spec.shard_scheme == "consistent" and 1 <= spec.shards < 8 else 3
    probe = cls(n + 1, 64)              # fail on a broken class before the stack is touched
    probe.shard_for(1)
    stack.apply(shards=n, shard_scheme="consistent")
    before = {i: s for s, ids in _rows_on_servers(stack, n).items() for i in ids}
    stack.apply(shards=n + 1)
    try:
        held = _rows_on_servers(stack, n + 1)
    finally:
        stack.apply(shards=n)
    ring = cls(n + 1, 64)
    wrong = [(i, s, ring.shard_for(i)) for s, ids in held.items() for i in ids if ring.shard_for(i) != s]
    moved = sum(1 for s, ids in held.items() for i in ids if before.get(i) != s)
    total = sum(len(ids) for ids in held.values())
    seen = f"resharded {n} -> {n + 1} servers: {moved} of {total} users moved ({moved / max(1, total):.1%})"
    from ...course.predictions import as_predicted
    seen += as_predicted("ring_moved_share", " (you predicted {:.1%})")
    if wrong:
        user, found, said = wrong[0]
        return Verdict(False, f"every user where HashRing({n + 1}, 64) says", f"{len(wrong)} users elsewhere",
                       f"{seen}; but user {user} is on postgres-shard-{found} and your ring says shard {said} "
                       f"({len(wrong)} of {total} disagree).",
                       hint="Your ring differs from the stack's: run check('hash_ring', HashRing) first; it names "
                            "the usual mistakes.")
    return Verdict(True, total, total, f"{seen}; all {total} are on the server your ring names.")


JUMP_STATE = {"shards": 4, "shard_scheme": "jump", "ttl_s": 0, "replicas": 2}


@check_definition("grown_with_jump", LAB, "grow the live stack to 4 shard servers with jump hash", hints=(
    "Two wishes at once: adding a server should move only the users it takes, and there should be no ring "
    "(no table of points) to keep in sync between app replicas.",
    "Of the stack's schemes, one needs no table and moves only a fair share: set it, and the number of "
    "servers, in one stack.apply(...). The check asks each server for its users.",
    "Worked example with other numbers: to grow to 6 servers with a ring you would run "
    "stack.apply(shards=6, shard_scheme='consistent').",
), solution_state=JUMP_STATE)
def check_grown_with_jump():
    from ._live import learner_stack
    stack = learner_stack()
    running = sorted(name for name, info in stack.status()["services"].items()
                     if name.startswith("postgres-shard-") and info.get("state") == "running")
    count = len(running)
    if count != 4:
        return Verdict(False, "4 shard servers running", count,
                       f"The stack runs {count} shard servers ({', '.join(running) or 'none'}).",
                       hint="stack.apply(shards=...) starts or stops shard servers and moves the users online.")
    held = _rows_on_servers(stack, 4)
    total = sum(len(ids) for ids in held.values())
    off = [(i, s) for s, ids in held.items() for i in ids if jump_shard(i, 4) != s]
    if off:
        return Verdict(False, "every user where jump hash puts it", f"{len(off)} of {total} elsewhere",
                       f"4 servers run, but {len(off)} of {total} users are not where jump hash over 4 puts them: "
                       f"the users were placed by another scheme.",
                       hint="The number is right; the map is not. Which scheme needs no table of points?")
    return Verdict(True, total, total, f"4 shard servers; all {total} users are where jump hash over 4 puts them.")
