"""Lab 5: size a pool with Little's law, count what the pools add up to, make the stack fit its limit."""
from __future__ import annotations

import math
from fractions import Fraction

from ...course.predictions import as_predicted
from ..registry import Verdict, check_definition
from ._cases import first_mismatch

LAB = "lab05"


def _exact(x) -> Fraction:
    return Fraction(str(x))


# -- 1. a pool from Little's law ------------------------------------------------------------

def reference_pool_size(rate_rps, query_ms, replicas, headroom):
    # Exact arithmetic: 200 x 50 / 1000 is 10, not 10.000000000000002 (which would round up to 11).
    busy = _exact(rate_rps) * _exact(query_ms) / 1000 / replicas * _exact(headroom)
    return math.ceil(busy)


POOL_TURNS = (
    (lambda r, q, n, h: math.ceil(r * q / n * h), "Off by a factor of 1000: query_ms is in milliseconds, the rate "
                                                  "per second."),
    (lambda r, q, n, h: math.ceil(r * q / 1000 * h), "That is the pool for all the replicas together: each replica "
                                                     "gets 1/replicas of the requests."),
    (lambda r, q, n, h: math.ceil(r * q / 1000 / n), "No headroom: a pool sized for the average is 100% busy, and "
                                                     "random bursts queue. Multiply by headroom."),
    # round() fails only where it rounds down, so floor's hint names both.
    (lambda r, q, n, h: math.floor(r * q / 1000 / n * h), "Rounded down (or to the nearest): a fraction of a "
                                                          "connection still needs a whole one, so round up."),
    (lambda r, q, n, h: math.ceil(r * q / 1000 / n / h), "Divided by the headroom: it is a safety factor, it makes "
                                                         "the pool bigger."),
)

POOL_CASES = [(200, 50, 2, 1.0), (200, 50, 2, 2.0), (240, 100, 8, 1.5), (1000, 5, 4, 2.0), (90, 30, 1, 1.0),
              (500, 12, 3, 1.5), (30, 200, 4, 2.0)]


@check_definition("pool_size", LAB, "connections per replica from Little's law, with headroom", hints=(
    "Little's law: the connections busy on average are the arrival rate times how long each request holds one.",
    "Work out the busy connections for the whole load (rate per second times the query time in seconds), share "
    "them among the replicas, multiply by the headroom, and round up to a whole connection.",
    "Worked example with other numbers: 300 req/s of 40 ms queries on 4 replicas with headroom 1.5: 300 x 0.040 "
    "= 12 busy in all, 3 per replica, x 1.5 = 4.5, so 5 connections per replica.",
))
def check_pool_size(fn):
    return first_mismatch(fn, POOL_CASES, reference_pool_size, compare=lambda a, b: a == b, wrong_turns=POOL_TURNS,
                          describe=lambda a: f"rate_rps={a[0]}, query_ms={a[1]}, replicas={a[2]}, headroom={a[3]}")


# -- 2. the largest pool that fits ------------------------------------------------------------

def reference_max_pool(max_connections, replicas, other_connections):
    return (max_connections - other_connections) // replicas


MAX_TURNS = (
    (lambda m, n, o: m // n, "Forgot the other connections: superuser slots, health probes and the room you keep "
                             "free come off the top before the replicas share the rest."),
    (lambda m, n, o: math.ceil((m - o) / n), "Rounded up: the replicas together would then open more than fits. "
                                             "Round down."),
    (lambda m, n, o: (m - o) / n, "Pool sizes are whole connections: round down to an integer."),
    (lambda m, n, o: m // n - o, "The other connections are counted once for the whole server, not once per "
                                 "replica: subtract them before dividing."),
    (lambda m, n, o: m - o, "Every replica opens its own pool: the servers' room is shared among the replicas."),
)

MAX_CASES = [(200, 8, 11), (100, 8, 20), (100, 3, 10), (500, 16, 25), (60, 4, 20), (97, 5, 2)]


@check_definition("max_pool", LAB, "the largest pool per replica that fits the server", hints=(
    "Every replica may fill its pool at the same moment (a rush, a deploy), so the pools must fit together.",
    "From max_connections take away the connections that are not the pools' (reserved for superusers, kept "
    "free for others, probes), share what is left among the replicas, and round down.",
    "Worked example with other numbers: max_connections 300, 12 replicas, 36 other connections: "
    "(300 - 36) / 12 = 22 per replica; with 13 replicas, 20.3, so 20.",
))
def check_max_pool(fn):
    return first_mismatch(fn, MAX_CASES, reference_max_pool, compare=lambda a, b: a == b and type(a) is type(b),
                          wrong_turns=MAX_TURNS,
                          describe=lambda a: f"max_connections={a[0]}, replicas={a[1]}, other_connections={a[2]}")


# -- 3. what the pools add up to on each server --------------------------------------------------

def reference_server_connections(replicas, write_pool, read_pool, bouncer_pool):
    clients = replicas * write_pool
    primary = clients if bouncer_pool is None else min(bouncer_pool, clients)
    return {"primary": primary, "replica": replicas * read_pool}


SERVER_TURNS = (
    (lambda n, w, r, b: {"primary": n * w, "replica": n * r},
     "With PgBouncer in front, the primary sees PgBouncer's server connections, not the app's: at most its "
     "pool size."),
    (lambda n, w, r, b: {"primary": n * w if b is None else b, "replica": n * r},
     "PgBouncer opens a server connection only for a client that needs one: it never holds more than the "
     "app's write connections, however large its pool_size."),
    (lambda n, w, r, b: {"primary": n * w if b is None else n * b, "replica": n * r},
     "There is one PgBouncer, and its pool_size is per database and user, not per app replica."),
    (lambda n, w, r, b: {"primary": n * w if b is None else min(b, n * w), "replica": r},
     "Every replica has its own read pool: multiply by the replicas."),
    (lambda n, w, r, b: {"primary": (n * w if b is None else min(b, n * w)) + n * r, "replica": n * r},
     "Reads go to the replica server, not the primary: the read pools count only there."),
)

SERVER_CASES = [(8, 20, 40, None), (4, 10, 40, 20), (8, 20, 40, 20), (2, 5, 10, 20), (3, 4, 6, 100),
                (16, 2, 3, None), (1, 30, 1, 25)]


@check_definition("server_connections", LAB, "the most connections the app's pools can open on each server",
                  hints=(
    "Count what each server can be asked for when every pool is full: the write pools go to the primary, "
    "through PgBouncer when bouncer_pool is a number; the read pools go to the replica server.",
    "Replica server: replicas times the read pool. Primary without PgBouncer (bouncer_pool None): replicas "
    "times the write pool. With PgBouncer: its pool size, but never more than the app's write connections.",
    "Worked example with other numbers: 5 replicas, write pool 6, read pool 9, bouncer_pool 40: the replica "
    "server sees 45; the app holds 30 write connections to PgBouncer, so the primary sees 30 (not 40); with "
    "bouncer_pool 12, it sees 12.",
))
def check_server_connections(fn):
    return first_mismatch(fn, SERVER_CASES, reference_server_connections, compare=lambda a, b: a == b,
                          wrong_turns=SERVER_TURNS,
                          describe=lambda a: f"replicas={a[0]}, write_pool={a[1]}, read_pool={a[2]}, "
                                             f"bouncer_pool={a[3]}")


# -- 4. the stack fits its limit under a given load: a stack-state check --------------------------

# The lab's stack: 8 replicas, max_connections 100 on each server. Of those, 3 are reserved for superusers
# and FREE_SLOTS must stay free for everyone else at the peak; each replica also keeps one health-probe
# connection to each server. A rush fills every pool to its limit (its clients want more connections
# than any sensible pool has); a steady load then needs enough connections (Little's law).
FIT = {"replicas": 8, "max_connections": 100, "reserved": 3, "free_slots": 9,
       "rush_clients": 320, "rush_ms": 100, "rush_s": 3.0,
       "read_rps": 240, "write_rps": 80, "query_ms": 100, "steady_s": 4.0, "p99_ms": 500}
# Measured here (2 cores, busy): the starting stack fills both servers to 96; read pool 8 behind PgBouncer 20
# -> replica 72 backends at the peak, primary 28, steady p99 ~120-135 ms; read pool 2 -> p99 2.5 s and 503s;
# write pool 10 without PgBouncer and read pool 10 -> exactly 88 on each server (passes).


def peak_allowed() -> int:
    return FIT["max_connections"] - FIT["reserved"] - FIT["free_slots"]


def _server_max_connections(stack) -> dict:
    from ... import clients
    out = {}
    for server, name in (("primary", "primary"), ("standby", "replica")):
        with clients.connect(stack, server, user="postgres", dbname="postgres") as conn:
            out[name] = int(conn.execute("SHOW max_connections").fetchone()[0])
    return out


SKIPPED = object()     # the steady load was not run: the rush had decided the verdict


def _rush_and_steady(stack):
    """The rush (closed loop) then the steady load (open loop), with both servers' backends watched.
    Returns (peaks, rush result, steady result). Steady is SKIPPED when the rush already filled a
    server (the verdict is decided: no need to make the learner wait for a second load), and None
    when the generator fell behind twice."""
    from ...course.pooling import PeakBackends
    from ...load.mix import Request, RequestMix
    from ...load import LoadSpec, run_load
    from ._live import entry_url, measure
    f = FIT
    rush_mix = RequestMix((Request("GET", f"/work?kind=db&ms={f['rush_ms']}", 1.0),
                           Request("GET", f"/work?kind=db_write&ms={f['rush_ms']}", 1.0)))
    steady_mix = RequestMix((Request("GET", f"/work?kind=db&ms={f['query_ms']}", f["read_rps"]),
                             Request("GET", f"/work?kind=db_write&ms={f['query_ms']}", f["write_rps"])))
    with PeakBackends(stack, "primary") as primary, PeakBackends(stack, "replica") as replica:
        # The rush only has to keep every pool asking for connections: a closed loop does that however
        # busy the machine is, so its generator is not second-guessed (the servers count the backends).
        rush = run_load(LoadSpec(url=entry_url(stack), mode="closed", connections=f["rush_clients"],
                                 duration_s=f["rush_s"], mix=rush_mix, timeout_s=10))
        peaks = lambda: {"primary": primary.peak, "replica": replica.peak}     # noqa: E731 - running maxima
        if _full(peaks()):
            steady = SKIPPED
        else:
            # 256 connections: a queue forms at the app's pools, where the check looks, not in the
            # generator. Send lag up to 50 ms is tolerated (40-48 ms seen with the machine's load average
            # at 10, the generator itself using 10% of a core): latency counts from the intended send
            # time anyway, and the verdict's band (p99 <= 500 ms of 100 ms queries) is ten times wider.
            steady = measure(stack, mode="open", rate=f["read_rps"] + f["write_rps"], connections=256,
                             duration_s=f["steady_s"], mix=steady_mix, timeout_s=10, seed=5, max_send_lag_ms=50)
    return peaks(), rush, steady


def _full(peaks: dict) -> list:
    """The servers whose app backends at the peak leave less than FIT's free slots."""
    return [server for server, peak in peaks.items() if peak > peak_allowed()]


def _errors(result) -> str:
    if not result.error_count:
        return "no errors"
    example = next(iter(result.error_examples.values()), "")
    return f"{result.error_count} errors (e.g. {example})"


@check_definition("fits_connections", LAB, "the load runs without errors and leaves room on both servers", hints=(
    "Two limits meet here: the pools must be large enough for the steady load (Little's law) and, all "
    "replicas together, small enough that a rush cannot fill a server (max_connections).",
    "Read pool: between pool_size(...) for the reads and max_pool(...) for the replica server. Writes: "
    "either put PgBouncer in front of the primary (its pool_size then bounds the primary, and must itself "
    "carry the writes by Little's law), or shrink the write pools until they fit too. Keep 8 replicas and "
    "max_connections 100.",
    "Worked example with other numbers: 6 replicas, max_connections 150, 3 reserved, 6 probes, 15 kept free: "
    "the pools may hold 126, so at most 21 per replica; 300 reads/s of 60 ms on 6 replicas with headroom 2 "
    "need 6 per replica: anything from 6 to 21 fits. For 50 writes/s of 60 ms, a PgBouncer pool of 8 or more "
    "carries them and adds at most its pool size to the primary.",
), solution_state={"replicas": 8, "max_connections": 100, "read_pool": 8, "write_pool": 20,
                   "pgbouncer.enabled": True, "pgbouncer.mode": "transaction", "pgbouncer.pool_size": 20})
def check_fits_connections():
    from ._live import inconclusive, learner_stack, replica_slots
    f = FIT
    stack = learner_stack()
    limits = _server_max_connections(stack)
    if set(limits.values()) != {f["max_connections"]}:
        return Verdict(False, f"max_connections {f['max_connections']} on both servers", limits,
                       f"The servers report max_connections {limits}. Raising it is not the fix: each connection is "
                       f"a server process with its own memory, and the limit is the database's to set.",
                       hint=f"Put it back: stack.apply(max_connections={f['max_connections']}), then size the pools.")
    running = len(replica_slots(stack))
    if running != f["replicas"]:
        return Verdict(False, f"{f['replicas']} app replicas", running,
                       f"{running} app replicas answer: the load needs {f['replicas']}; fewer replicas would hide "
                       "the problem, not solve it.", hint=f"stack.apply(replicas={f['replicas']}).")
    peaks, rush, steady = _rush_and_steady(stack)
    full = _full(peaks)
    if steady is None and not full:     # a full server decides, measured or not
        return inconclusive()
    allowed = peak_allowed()
    steady_seen = ("not run (the rush had decided)" if steady is SKIPPED else
                   "the generator fell behind twice" if steady is None else
                   f"{_errors(steady)}, p99 {steady.latency_ms()['p99_ms']:.0f} ms")
    seen = (f"rush of {f['rush_clients']} clients: {_errors(rush)}; steady {f['read_rps']} reads/s + "
            f"{f['write_rps']} writes/s: {steady_seen}; app backends at the peak (the servers' "
            f"pg_stat_activity): primary {peaks['primary']}, replica {peaks['replica']} (at most {allowed} leaves "
            f"{f['free_slots']} of the {f['max_connections'] - f['reserved']} free)")
    seen += as_predicted("rush_peak_backends", "; you predicted {:.0f} on the replica")
    if full:
        server = full[0]
        hint = ("The read pools of all replicas together are more than the replica server can hold: lower "
                "app.read_pool to what max_pool gives." if server == "replica" else
                "The write pools reach the primary directly: 8 replicas x the write pool is more than fits. Put "
                "PgBouncer in front (pgbouncer.enabled=True) or shrink app.write_pool.")
        return Verdict(False, f"at most {allowed} app backends on each server",
                       {s: p for s, p in peaks.items()}, seen + f": the {server} ran out of room.", hint=hint)
    # The rush only has to leave room on the servers: its requests may queue, and a few may time out while
    # hundreds of new connections log in at once (PgBouncer checks each password on one core). The steady
    # load is the one that must be served.
    p99 = steady.latency_ms()["p99_ms"]
    if steady.error_count or p99 > f["p99_ms"]:
        return Verdict(False, f"steady load: no errors and p99 <= {f['p99_ms']} ms",
                       f"{steady.error_count} errors, p99 {p99:.0f} ms",
                       seen + ": the pools are too small for the load.",
                       hint="Requests waited for a connection (and after 2 s got a 503): size the read pool from "
                            "Little's law with headroom, and check that PgBouncer's pool carries the writes.")
    return Verdict(True, detail=seen + ": the load is served and both servers keep room to spare.")
