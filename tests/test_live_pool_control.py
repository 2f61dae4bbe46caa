"""The read-pool control and the pool panel, without a stack: built from a Topology and fake samples."""
from __future__ import annotations

from stack.live.controls import CONTROLS
from stack.live.dashboard import Run
from stack.live.loadfeed import LoadInterval
from stack.live.panels import PANELS
from stack.sample import CacheSample, PostgresSample, ReplicaSample, Sample
from stack.topology import Topology


def _replica(name, max_size, size=0, waiting=0):
    return ReplicaSample(name=name, rps=1.0, share=0.5, in_flight=0, errors_per_s=0.0, cache_hits_per_s=0.0,
                         cache_misses_per_s=0.0, busy=0, queued=0, concurrency=4,
                         pools={"read": {"max_size": max_size, "size": size, "idle": 0, "waiting": waiting,
                                         "timeouts": 0}})


def _sample(t, *replicas):
    return Sample(t=t, interval_s=0.5, replicas={r.name: r for r in replicas}, total_rps=2.0, cache=CacheSample(),
                  postgres=PostgresSample(), pgbouncer=None)


def test_read_pool_control_shows_the_applied_size_and_asks_for_app_read_pool():
    moves = []
    control = CONTROLS["read_pool"](Topology().with_changes(read_pool=12), lambda c, v: moves.append(v))
    assert control.value == 12 and moves == []          # building is not a change
    control.value = 3
    assert moves == [3]
    assert control.changes(3) == {"app.read_pool": 3}
    assert control.describe(3) == "read pool → 3"
    control.sync(Topology().with_changes(read_pool=7))
    assert control.value == 7 and moves == [3]          # syncing is not a change either


def test_read_pool_change_is_reflected_once_every_replica_reports_the_new_size():
    control = CONTROLS["read_pool"](Topology(), lambda c, v: None)
    applied = 100.0
    half = _sample(101.0, _replica("app-1", 3), _replica("app-2", 40))
    both = _sample(101.0, _replica("app-1", 3), _replica("app-2", 3))
    early = _sample(100.1, _replica("app-1", 3), _replica("app-2", 3))
    assert not control.reflected_in(half, 3, applied)
    assert control.reflected_in(both, 3, applied)
    assert not control.reflected_in(early, 3, applied)   # most of its interval ran before the change
    assert not control.reflected_in(_sample(101.0), 3, applied)


def test_pool_panel_sums_replicas_and_carries_the_p99():
    run = Run(label="r", started_at=100.0)
    run.samples = [_sample(100.5, _replica("app-1", 3, size=3, waiting=10), _replica("app-2", 3, size=2, waiting=5)),
                   _sample(101.0)]
    run.intervals = [LoadInterval(t=101.0, throughput_rps=120, p50_ms=40, p95_ms=90, p99_ms=800.0, errors=0)]
    series = {s.name: s for s in PANELS["pool"].series(run)}
    assert series["read pool: connections open"].y == [5, None]
    assert series["read pool: requests waiting"].y == [15, None]
    assert series["p99"].x == [1.0] and series["p99"].y == [800.0] and series["p99"].secondary
