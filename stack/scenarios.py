"""Mystery stacks for lesson and lab 8: a symptom on the outside, one real bottleneck inside.

    sc = stack.scenario("mystery-1")
    sc                        # the symptom only: "p99 is near 2 s at 300 req/s; why?"
    sc.apply()                # the live stack takes the scenario's settings (several of them)
    sc.workload(stack)        # the LoadSpec that shows the symptom (the same mix for every scenario)
    sc.diagnose("balancing")  # commit a diagnosis while the stack still shows the symptom
    sc.reveal()               # the root cause and its fix, once a diagnosis was committed

Every scenario changes several settings, and only one of them limits p99: the others are
red herrings that look suspicious (a replica applying WAL late, a short TTL, a small write
pool ...) and cost nothing measurable under this workload. The same decoy is the cause in
another scenario, so the fix cannot be learnt by heart. tests/test_scenarios.py measures,
for each scenario, that its named fix improves p99 at least 2x and a wrong fix does not.

The workload is the same for all of them: 300 req/s, Poisson arrivals, half user reads
(Zipf keys), 40% reports (a 40 ms query on the read replica that holds a work slot and a
pooled read connection), 10% user renames (writes to the primary). Healthy, the 16 work
slots of 4 replicas are 30% busy; every root cause below pushes one resource past 100%.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import StackError
from .load import LoadSpec, RequestMix
from .load.keys import Keys
from .load.mix import Request

RATE = 300                 # req/s offered, Poisson
REPORT_MS = 40             # the report query: pg_sleep on the read replica
USERS = 10_000

# The article's order of fixes, as settings the learner applies one step at a time. Each step
# brings its part of the stack back to the article's defaults.
FIX_STEPS: tuple[tuple[str, dict], ...] = (
    ("1. scale out (replicas)", {"replicas": 4, "concurrency": 4}),
    ("2. balance smartly", {"strategy": "least_conn", "weights": None}),
    ("3. read replicas (database path)", {"read_from": "replica", "read_pool": 40, "write_pool": 20,
                                          "synchronous_commit": "on", "replica_delay_ms": 0}),
    ("4. cache", {"ttl_s": 300}),
)

# What a learner may name as the root cause: one per part of the path a request takes.
CAUSES = {
    "app_capacity": "too few app work slots for the offered load (replicas x concurrency)",
    "balancing": "the load balancer sends the traffic unevenly",
    "db_pool": "requests wait for a pooled database connection",
    "replication": "writes wait for the streaming replica",
    "cache": "reads that a cache should absorb reach the database",
    "database_cpu": "PostgreSQL itself is slow (a missing index, a heavy query)",
}


def workload_mix() -> RequestMix:
    return RequestMix((Request("GET", "/users/{key}", 50, name="GET /users/{id}"),
                       Request("GET", f"/work?kind=db&ms={REPORT_MS}", 40, name="GET report"),
                       Request("PUT", "/users/{key}", 10, {"name": "renamed-{key}"}, name="PUT /users/{id}")),
                      Keys.zipf(USERS))


@dataclass(frozen=True)
class Scenario:
    name: str
    symptom: str                     # all a learner sees before diagnosing
    changes: dict                    # every setting the scenario changes (cause and decoys)
    _cause: str = field(repr=False)
    _fix: dict = field(repr=False)         # the one change that removes the bottleneck
    _wrong_fix: dict = field(repr=False)   # a plausible change that does not
    _why: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Scenario({self.name!r}: {self.symptom})"

    def _repr_markdown_(self) -> str:
        return f"**{self.name}**: {self.symptom}"

    # -- the live stack --------------------------------------------------------------------
    def topology(self, base=None):
        """The scenario's topology: the defaults (on `base`'s port block) plus its changes."""
        from .topology import Topology
        port = base.base_port if base is not None else Topology.from_env().base_port
        return Topology(base_port=port).with_changes(**self.changes)

    def apply(self, stack=None, progress=None):
        """Bring the live stack to this scenario (from whatever it runs now)."""
        from . import get_stack
        stack = stack or get_stack()
        current = stack.applied() if stack.status()["running"] else None
        stack.up(self.topology(current), progress=progress)
        _committed.pop(self.name, None)
        return stack

    def workload(self, stack, seconds: float = 3.0, seed: int = 8) -> LoadSpec:
        """The load that shows the symptom: 300 req/s of the mix, open loop, Poisson."""
        # 256 connections: past capacity, requests queue at the server, not in the generator's pool.
        return LoadSpec(url=stack.status()["url"], mode="open", rate=RATE, duration_s=seconds, connections=256,
                        mix=workload_mix(), seed=seed, timeout_s=10, max_send_lag_ms=10)

    def still_broken(self, stack) -> bool:
        """Whether the stack still runs every setting of the scenario (nothing fixed yet)."""
        applied = stack.applied()
        return applied is not None and applied == self.topology(applied)

    def changed_since(self, stack) -> list[str]:
        """The scenario's settings the stack no longer has, as 'field: scenario -> now'."""
        from .course.start import differences
        applied = stack.applied()
        return differences(self.topology(applied), applied) if applied is not None else []

    # -- diagnosing ----------------------------------------------------------------------------
    def diagnose(self, cause, stack=None) -> bool | None:
        """Commit a diagnosis (one of CAUSES) while the stack still shows the symptom.

        `...` commits nothing. The answer is stored with the time; reveal() shows it beside
        the root cause. A diagnosis made after a fix was applied is refused: profile first."""
        from . import get_stack
        if cause is ...:
            print("No diagnosis committed (replace ... with one of: " + ", ".join(CAUSES) + ").")
            return None
        if cause not in CAUSES:
            raise StackError(f"cause={cause!r} is not allowed: one of {', '.join(CAUSES)}")
        stack = stack or get_stack()
        if not self.still_broken(stack):
            raise StackError(f"{self.name}: the stack no longer runs the scenario "
                             f"({'; '.join(self.changed_since(stack)) or 'not applied'}): a diagnosis must come "
                             f"before the fix. Run scenario({self.name!r}).apply() and measure again.")
        _committed[self.name] = (cause, time.time())
        print(f"Diagnosis committed for {self.name}: {cause} ({CAUSES[cause]}).")
        return cause == self._cause

    def is_cause(self, cause: str) -> bool:
        """True when `cause` names this scenario's bottleneck (for checks; prints nothing)."""
        return cause == self._cause

    def fix_step(self) -> str:
        """The step of FIX_STEPS that holds the fix (for checks; prints nothing)."""
        for label, changes in FIX_STEPS:
            if set(self._fix) <= set(changes) and all(changes[k] == v for k, v in self._fix.items()):
                return label
        return "(none of the article's steps)"

    def reveal(self) -> str:
        """The root cause, once a diagnosis was committed (or with the scenario fixed)."""
        from . import get_stack
        committed = _committed.get(self.name)
        if committed is None and self.still_broken(get_stack()):
            return "Commit a diagnosis first: scenario.diagnose(...) (one of " + ", ".join(CAUSES) + ")."
        said = f"you said {committed[0]!r}; " if committed else ""
        fix = ", ".join(f"{k}={v!r}" for k, v in self._fix.items())
        return f"{self.name}: {said}the root cause is {self._cause!r}: {self._why} The fix: {fix}."

    # For the tests and the lab's checks, which must know the answer without printing it.
    @property
    def fix(self) -> dict:
        return dict(self._fix)

    @property
    def wrong_fix(self) -> dict:
        return dict(self._wrong_fix)


_committed: dict[str, tuple[str, float]] = {}

SCENARIOS = {s.name: s for s in (
    Scenario(
        "mystery-1", "p99 is near 2 s at 300 req/s (a healthy stack: under 100 ms); why?",
        changes={"replicas": 1, "concurrency": 3, "strategy": "round_robin", "ttl_s": 5, "write_pool": 4,
                 "replica_delay_ms": 300},
        _cause="app_capacity", _fix={"replicas": 4}, _wrong_fix={"replica_delay_ms": 0, "write_pool": 20},
        _why="one replica has 3 work slots; 120 reports/s x 40 ms keep 4.8 of them busy, so the queue for a "
             "slot grows for as long as the load lasts."),
    Scenario(
        "mystery-2", "p99 is near 2 s at 300 req/s, though 4 app replicas run; why?",
        changes={"strategy": "ip_hash", "concurrency": 3, "ttl_s": 0, "read_pool": 10, "keepalive": 8},
        _cause="balancing", _fix={"strategy": "least_conn"}, _wrong_fix={"replicas": 8},
        _why="ip_hash keys on the client's address, and every request comes from one address: one replica "
             "gets all of it (3 slots for 4.8 slots of work) while three idle. More replicas change nothing."),
    Scenario(
        "mystery-3", "p99 is over 2 s at 300 req/s, and the app replicas use little CPU; why?",
        changes={"replicas": 3, "read_pool": 1, "strategy": "random_two", "ttl_s": 10, "pool_size": 5},
        _cause="db_pool", _fix={"read_pool": 40}, _wrong_fix={"ttl_s": 300, "strategy": "least_conn"},
        _why="each replica may hold one read connection: 3 connections for 4.8 reports' worth of queries, "
             "so requests wait for the pool (the wait shows as db time, yet PostgreSQL is idle)."),
    Scenario(
        "mystery-4", "p99 is about 1 s at 300 req/s, while the median is under 50 ms; why?",
        changes={"synchronous_commit": "remote_apply", "replica_delay_ms": 500, "strategy": "round_robin",
                 "read_pool": 8, "ttl_s": 60},
        _cause="replication", _fix={"synchronous_commit": "on"}, _wrong_fix={"replicas": 8},
        _why="every commit waits until the replica has applied it, and the replica applies WAL 500 ms late: "
             "each write (10% of requests) takes over 500 ms, which is the p99."),
)}


def scenario(name: str) -> Scenario:
    """A mystery stack by name: mystery-1 ... mystery-4."""
    if name not in SCENARIOS:
        raise StackError(f"scenario={name!r} is not allowed: one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name]
