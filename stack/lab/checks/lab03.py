"""Lab 3: load balancing. The learner writes nginx's pickers in Python and predicts the live nginx with them.

Replicas are numbered from 1, as nginx's upstream lists them (app-1, app-2, ...).
The reference pickers below follow nginx's own source (ngx_http_upstream_round_robin.c,
ngx_http_upstream_least_conn_module.c, ngx_http_upstream_ip_hash_module.c) for the
cases the lab uses: every replica up, one nginx worker.
"""
from __future__ import annotations

import random
from collections import Counter

from ...course.predictions import as_predicted
from ..registry import Verdict, check_definition
from ._cases import first_mismatch

LAB = "lab03"


# -- reference pickers (pure; tests/test_balancing_algorithms.py covers them) ------------

def reference_round_robin(replicas, n):
    """The first n picks of plain round-robin over replicas 1..replicas."""
    return [i % replicas + 1 for i in range(n)]


def reference_smooth_weighted(weights, n):
    """nginx's smooth weighted round-robin: the first n picks (replica numbers from 1).

    Each pick, every replica's current weight grows by its weight; the largest current
    weight wins (the first one on a tie) and gives back the total of all weights.
    """
    current = [0] * len(weights)
    total = sum(weights)
    picks = []
    for _ in range(n):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        picks.append(best + 1)
    return picks


def reference_least_connections(in_flight, weights=None):
    """The replica (from 1) with the fewest requests in flight per unit of weight; the first on a tie."""
    weights = weights or [1] * len(in_flight)
    best = 0
    for i in range(1, len(in_flight)):
        # in_flight[i] / weights[i] < in_flight[best] / weights[best], without division
        if in_flight[i] * weights[best] < in_flight[best] * weights[i]:
            best = i
    return best + 1


def ip_hash_number(address, octets: int = 3, reduce: bool = True) -> int:
    """nginx's hash of an IPv4 address: from 89, hash = (hash x 113 + octet) % 6271 over the first three octets."""
    h = 89
    for octet in [int(part) for part in address.split(".")][:octets]:
        h = h * 113 + octet
        if reduce:
            h %= 6271
    return h


def walk_weights(h: int, weights) -> int:
    """The replica (from 1) where h modulo the total weight falls, each replica taking `weight` slots."""
    w = h % sum(weights)
    replica = 0
    while w >= weights[replica]:
        w -= weights[replica]
        replica += 1
    return replica + 1


def reference_ip_hash(address, weights):
    """nginx's ip_hash for an IPv4 address: the replica (from 1) it sends that client to."""
    return walk_weights(ip_hash_number(address), weights)


def _is_picks(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _same(a, b) -> bool:
    return _is_picks(a) and list(a) == list(b)


def _cycle(blocks, n):
    return [blocks[i % len(blocks)] for i in range(n)]


# -- 1. round-robin ------------------------------------------------------------------------

ROUND_ROBIN_TURNS = (
    (lambda r, n: [i % r for i in range(n)], "Replica numbers start at 1 (app-1), not 0."),
    (lambda r, n: [(i + 1) % r + 1 for i in range(n)], "The first request goes to replica 1: you start one further on."),
    (lambda r, n: [i % r + 1 for i in range(n - 1)], "Count the picks: n requests need n answers."),
    (lambda r, n: [min(i + 1, r) for i in range(n)], "After the last replica, the turn wraps around to replica 1."),
)


@check_definition("round_robin", LAB, "plain round-robin: the first n picks", hints=(
    "Round-robin hands out turns in order and starts again at the start: the balancer keeps only a position.",
    "Pick number i (counting from 0) goes to replica (i modulo the number of replicas) + 1, "
    "because replicas are numbered from 1.",
    "Worked example with other numbers: 2 replicas, 5 requests: 1, 2, 1, 2, 1.",
))
def check_round_robin(fn):
    cases = [(3, 7), (1, 3), (4, 4), (5, 12), (2, 0)]
    return first_mismatch(fn, cases, reference_round_robin, compare=_same, wrong_turns=ROUND_ROBIN_TURNS,
                          describe=lambda a: f"replicas={a[0]}, n={a[1]}")


# -- 2. smooth weighted round-robin ----------------------------------------------------------

def _blocky(weights, n):
    return _cycle([i for i, w in enumerate(weights, start=1) for _ in range(w)], n)


def _ties_to_last(weights, n):
    current, total, picks = [0] * len(weights), sum(weights), []
    for _ in range(n):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], i))
        current[best] -= total
        picks.append(best + 1)
    return picks


def _subtracts_own_weight(weights, n):
    current, picks = [0] * len(weights), []
    for _ in range(n):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= weights[best]
        picks.append(best + 1)
    return picks


SMOOTH_TURNS = (
    (_blocky, "That sends each replica its whole weight in a row (1, 1, 1, 2, 3 ...). nginx interleaves: "
              "it keeps a running 'current weight' per replica, so the heavy one is spread out."),
    (_ties_to_last, "On a tie between current weights, nginx keeps the FIRST replica in the list."),
    (_subtracts_own_weight, "The winner gives back the TOTAL of all weights, not its own weight: "
                            "otherwise every current weight only grows."),
    (lambda w, n: reference_round_robin(len(w), n), "That ignores the weights: it is plain round-robin."),
    (lambda w, n: [p - 1 for p in reference_smooth_weighted(w, n)], "Replica numbers start at 1 (app-1), not 0."),
)


@check_definition("smooth_weighted_round_robin", LAB, "nginx's smooth weighted round-robin: the first n picks", hints=(
    "nginx keeps a 'current weight' per replica, starting at 0. Each pick raises every current weight by "
    "that replica's weight, chooses the largest, and lowers the winner by the sum of all weights.",
    "On a tie, the replica listed first wins. Over one cycle (as many picks as the weights add up to) every "
    "replica is picked exactly its weight in times, but never in long runs.",
    "Worked example with other numbers: weights [2, 1]. Pick 1: current [2, 1], replica 1 wins, [-1, 1]. "
    "Pick 2: [1, 2], replica 2 wins, [1, -1]. Pick 3: [3, 0], replica 1, [0, 0]: picks 1, 2, 1.",
))
def check_smooth_weighted(fn):
    cases = [([5, 1, 1], 7), ([3, 1, 1], 10), ([1, 1, 1], 5), ([4, 2, 1], 14), ([2, 3], 9), ([1, 5, 2, 1], 18),
             ([7], 3)]
    return first_mismatch(fn, cases, reference_smooth_weighted, compare=_same, wrong_turns=SMOOTH_TURNS,
                          describe=lambda a: f"weights={a[0]}, n={a[1]}")


# -- 3. least connections --------------------------------------------------------------------

LEAST_TURNS = (
    (lambda c, w=None: max(range(len(c)), key=lambda i: c[i]) + 1,
     "That is the BUSIEST replica: least connections picks the one with the fewest in flight."),
    (lambda c, w=None: min(range(len(c)), key=lambda i: c[i]) + 1,
     "That ignores the weights: compare requests in flight divided by weight."),
    (lambda c, w=None: min(range(len(c)), key=lambda i: c[i] * (w or [1] * len(c))[i]) + 1,
     "Multiplied by the weight: a heavier replica should look LESS busy, so divide by its weight."),
    (lambda c, w=None: min(range(len(c)), key=lambda i: (c[i] / (w or [1] * len(c))[i], -i)) + 1,
     "On a tie, the replica listed first wins."),
    (lambda c, w=None: reference_least_connections(c, w) - 1, "Replica numbers start at 1 (app-1), not 0."),
)


@check_definition("least_connections", LAB, "least connections, with weights", hints=(
    "Least connections sends the request to the replica with the fewest requests in flight right now.",
    "With weights, compare in_flight / weight: a replica of weight 3 counts as busy as a replica of "
    "weight 1 only when it holds three times as many requests. On a tie, the first replica wins.",
    "Worked example with other numbers: in flight [4, 2, 2], weights [4, 1, 1]: ratios 1.0, 2.0, 2.0, "
    "so replica 1, although it holds the most requests.",
))
def check_least_connections(fn):
    cases = [([3, 1, 2], None), ([0, 0, 0], None), ([2, 2, 1, 1], None), ([5, 2, 2], [3, 1, 1]),
             ([3, 1, 1], [3, 1, 1]), ([6, 3, 1], [3, 2, 1]), ([1, 0], [5, 1]), ([2, 0, 2], [1, 1, 1])]
    return first_mismatch(fn, cases, reference_least_connections, compare=lambda a, b: a == b,
                          wrong_turns=LEAST_TURNS,
                          describe=lambda a: f"in_flight={a[0]}, weights={a[1]}")


# -- 4. ip hash --------------------------------------------------------------------------------

def _all_four(address, weights):
    return walk_weights(ip_hash_number(address, octets=4), weights)


def _by_count(address, weights):
    return ip_hash_number(address) % len(weights) + 1


def _no_modulo(address, weights):
    return walk_weights(ip_hash_number(address, reduce=False), weights)


IP_TURNS = (
    (_all_four, "nginx hashes only the first THREE octets of an IPv4 address: 10.1.2.3 and 10.1.2.99 "
                "are the same client to ip_hash."),
    (_by_count, "That divides by the number of replicas: nginx takes the hash modulo the TOTAL WEIGHT, "
                "then walks the replicas subtracting each weight."),
    (_no_modulo, "Keep the hash small at every step: modulo 6271 after each octet."),
    (lambda a, w: reference_ip_hash(a, w) - 1, "Replica numbers start at 1 (app-1), not 0."),
)


@check_definition("ip_hash", LAB, "nginx's ip_hash for an IPv4 client", hints=(
    "ip_hash turns the client's address into a number, and the number into a replica: the same address "
    "always gives the same replica. nginx uses only the first three octets.",
    "Start from 89; for each of the first three octets, hash = (hash x 113 + octet) modulo 6271. Then "
    "w = hash modulo the sum of the weights; walk the replicas from the first, subtracting each one's "
    "weight from w while w is at least that weight; where you stop is the replica.",
    "Worked example with other numbers: 10.0.0.7, weights [1, 1]: 89 x 113 + 10 = 10067 -> 3796; "
    "3796 x 113 + 0 -> 2520; 2520 x 113 + 0 -> 2565; 2565 mod 2 = 1: skip replica 1 (w becomes 0), "
    "stop at replica 2.",
))
def check_ip_hash(fn):
    cases = [(f"127.0.{n}.1", [1, 1, 1, 1]) for n in (1, 2, 10, 20, 30)]
    cases += [("192.168.7.20", [1, 1, 1]), ("10.20.30.40", [3, 1, 1]), ("10.20.30.41", [3, 1, 1]),
              ("172.16.5.9", [1, 2, 1, 4]), ("127.0.200.1", [2, 1, 1, 1, 1])]
    return first_mismatch(fn, cases, reference_ip_hash, compare=lambda a, b: a == b, wrong_turns=IP_TURNS,
                          describe=lambda a: f"address={a[0]!r}, weights={a[1]}")


# -- 5. your weighted round-robin against the live nginx ------------------------------------------

# Weight vectors the live check picks from, each with a request count that is not a whole
# number of cycles (so sending each replica its weight in a row gives other counts).
SPLITS = (((5, 1, 1, 1), 13), ((3, 2, 1, 1), 11), ((4, 1, 2, 1), 10), ((1, 6, 1, 2), 14))
SPLIT_TOLERANCE = 0   # one request at a time, one worker: nginx is exact here (FACTS: 600 of 600)


@check_definition("nginx_split", LAB, "your weighted round-robin predicts the live nginx", hints=(
    "The check picks weights, asks your smooth_weighted_round_robin for the first n picks, then sets "
    "round_robin with those weights on the live stack and sends n requests one after another.",
    "If smooth_weighted_round_robin passes its own check, this one agrees with nginx: read the measured "
    "order in the message.",
), needs_stack=True)
def check_nginx_split(fn):
    from ...course.balancing import sequence
    from ._live import learner_stack, shape_stack
    if not callable(fn):
        return Verdict(False, "your smooth_weighted_round_robin function", fn,
                       "Pass your function: the check picks the weights, so no list can be right in advance.")
    # Weights other than the live ones: applying them reloads nginx, so its round-robin starts from
    # the top. The same weights again would change nothing, and nginx would go on mid-cycle from the
    # last check's requests (a right answer failed one check in four).
    live = learner_stack().applied()
    live_weights = tuple(live.balancer.weight_list(live.app.replicas)) if live else None
    weights, n = random.SystemRandom().choice([s for s in SPLITS if s[0] != live_weights])
    predicted = fn(list(weights), n)                 # committed before anything is sent
    stack = shape_stack(replicas=len(weights), strategy="round_robin", weights=weights, concurrency=4)
    observed = [int(name.split("-")[1]) if name.startswith("app-") else 0 for name in sequence(stack, n)]
    if not _is_picks(predicted) or len(predicted) != n:
        return Verdict(False, f"a list of {n} replica numbers", predicted,
                       f"Weights {list(weights)}: your function did not give {n} picks.")
    mine, nginx = Counter(predicted), Counter(observed)
    counts = {f"app-{i}": (mine.get(i, 0), nginx.get(i, 0)) for i in range(1, len(weights) + 1)}
    seen = (f"Weights {list(weights)}, {n} requests one at a time: nginx sent "
            + ", ".join(f"{name} {b}" for name, (_, b) in counts.items())
            + "; you predicted " + ", ".join(f"{name} {a}" for name, (a, _) in counts.items())
            + f". nginx's order: {observed}.")
    if any(abs(a - b) > SPLIT_TOLERANCE for a, b in counts.values()):
        turn = next((h for mistake, h in SMOOTH_TURNS if _same(predicted, mistake(list(weights), n))), None)
        return Verdict(False, {k: b for k, (a, b) in counts.items()}, {k: a for k, (a, b) in counts.items()},
                       seen, hint=turn)
    same_order = list(predicted) == observed
    return Verdict(True, detail=seen + (" Same order too." if same_order else
                                        " (Same counts; the order differs.)"))


# -- 6. your ip_hash against the live nginx ----------------------------------------------------

@check_definition("nginx_ip_hash", LAB, "your ip_hash predicts where nginx sends each client", hints=(
    "The check sets ip_hash with weights on the live stack, asks your ip_hash where each of a few clients "
    "goes, then sends one request from each client's address and reads X-Replica.",
    "If ip_hash passes its own check, this one agrees with nginx: read the client and replica in the message.",
), needs_stack=True)
def check_nginx_ip_hash(fn):
    from ...course.balancing import clients_to_replicas
    from ._live import shape_stack
    if not callable(fn):
        return Verdict(False, "your ip_hash function", fn, "Pass your function, not a value.")
    rng = random.SystemRandom()
    weights = rng.choice(((1, 1, 1, 1), (2, 1, 1, 1), (1, 1, 3)))
    clients = [f"127.{rng.randrange(0, 3)}.{rng.randrange(1, 255)}.{rng.randrange(1, 250)}" for _ in range(6)]
    clients = list(dict.fromkeys(clients))
    predicted = {c: fn(c, list(weights)) for c in clients}       # committed first
    stack = shape_stack(replicas=len(weights), strategy="ip_hash", weights=weights)
    observed = {c: int(r.split("-")[1]) if r.startswith("app-") else r
                for c, r in clients_to_replicas(stack, clients, repeat=1).items()}
    wrong = {c: (predicted[c], observed[c]) for c in clients if predicted[c] != observed[c]}
    seen = f"Weights {list(weights)}: " + ", ".join(f"{c} -> app-{observed[c]}" for c in clients) + "."
    if wrong:
        c, (mine, nginx) = next(iter(wrong.items()))
        return Verdict(False, f"app-{nginx} for {c}", mine,
                       f"{seen} You predicted {len(clients) - len(wrong)} of {len(clients)} right.")
    return Verdict(True, detail=f"{seen} All {len(clients)} predicted right.")


# -- 7. stack state: half of the traffic to app-1 -------------------------------------------------

PREDICTION = "half_to_app1_pct"     # the lab's predict(...) cell stores the learner's guess under this name
SHARE_GOAL = {"replica": "app-1", "share": 0.5, "tolerance": 0.05, "replicas": 4, "rate": 150,
              "service_ms": 10, "seconds": 3.0}


def measured_shares(stack, seconds: float | None = None) -> tuple[dict, int] | None:
    """Poisson load through nginx; requests per replica counted by each replica (/metrics). None if too busy."""
    from ...course.readings import replica_metrics
    from ._live import open_loop
    g = SHARE_GOAL
    before = {n: m["by_route"].get("work", 0) for n, m in replica_metrics(stack).items()}
    result = open_loop(stack, f"/work?kind=io&ms={g['service_ms']}", rate=g["rate"],
                       seconds=seconds or g["seconds"], seed=7)
    if result is None:
        return None
    after = {n: m["by_route"].get("work", 0) for n, m in replica_metrics(stack).items()}
    counted = {n: after[n] - before.get(n, 0) for n in after}
    return counted, result.error_count


@check_definition("half_to_app1", LAB, "the balancer sends half of all requests to app-1, 4 replicas serving", hints=(
    "Weights decide how many turns each replica gets; which strategy reads them matters too "
    "(lesson 3, section 2: under least_conn, weights bend with the load).",
    "Under round-robin a replica's share is its weight divided by the sum of all weights: choose the four "
    "weights so app-1's part is one half, then stack.apply(strategy=..., weights=(...)).",
    "Worked example with other numbers: for 40% to app-1 with 3 replicas, app-1 needs 40% of the total: "
    "weights (2, 2, 1) give 2/5, with strategy='round_robin'.",
), solution_state={"replicas": 4, "strategy": "round_robin", "weights": (3, 1, 1, 1)})
def check_half_to_app1():
    from ._live import inconclusive, learner_stack
    g = SHARE_GOAL
    stack = learner_stack()
    measured = measured_shares(stack)
    if measured is None:
        return inconclusive()
    counted, errors = measured
    total = sum(counted.values()) or 1
    shares = {n: c / total for n, c in sorted(counted.items())}
    topology = stack.applied()
    seen = (f"{len(counted)} replicas, {topology.balancer.strategy}, weights "
            f"{topology.balancer.weight_list(topology.app.replicas)}: the replicas counted "
            + ", ".join(f"{n} {s:.0%}" for n, s in shares.items()) + f" of {total} requests "
            f"({g['rate']} req/s, Poisson)")
    seen += as_predicted(PREDICTION, f" (you predicted {{:.0f}}% for {g['replica']})")
    if len(counted) != g["replicas"] or any(s < 0.05 for s in shares.values()):
        return Verdict(False, f"{g['replicas']} replicas, each serving some traffic", shares,
                       f"{seen}: the goal keeps all {g['replicas']} replicas in service.",
                       hint="Keep 4 replicas and let each one serve: change weights, not the replica count."
                       if len(counted) != g["replicas"] else
                       "A replica got (almost) nothing: with ip_hash, every request from this machine is one "
                       "client. Use a strategy that spreads requests.")
    share = shares.get(g["replica"], 0.0)
    if errors or abs(share - g["share"]) > g["tolerance"]:
        hint = None
        if topology.balancer.strategy == "least_conn" and topology.balancer.weights:
            hint = ("Under least_conn, weights only compare requests in flight; at this light load app-1 "
                    "gets less than its weight says. Which strategy obeys weights at any load?")
        return Verdict(False, f"{g['replica']} {g['share']:.0%} (within {g['tolerance']:.0%})", f"{share:.1%}",
                       seen + (f", {errors} errors" if errors else "") + ".", hint=hint)
    return Verdict(True, g["share"], round(share, 3), seen + ": on target.")
