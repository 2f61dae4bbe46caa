"""Per-replica CPU quotas: a CPU-bound replica with a 0.25-core quota serves about a quarter as much."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import request, shifted_port
from stack.errors import StackError
from stack.local import cpu_quota
from stack.local.backend import LocalStack
from stack.topology import Topology

BASE = shifted_port(20200)


def cpu_work_rate(port: int, seconds: float = 1.5) -> float:
    """Completed 10 ms CPU-burn requests per second, two clients in parallel."""
    deadline = time.monotonic() + seconds

    def client():
        done = 0
        while time.monotonic() < deadline:
            assert request(port, "GET", "/work?kind=cpu&ms=10")[0] == 200
            done += 1
        return done

    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(lambda _: client(), range(2))) / seconds


@pytest.mark.skipif(not cpu_quota.support().available, reason=cpu_quota.support().reason)
def test_quota_limits_a_cpu_bound_replica(state_dir):
    stack = LocalStack(state_dir)
    stack.up(Topology(base_port=BASE).with_changes(replicas=1, concurrency=1))
    try:
        port = stack.status()["services"]["app-1"]["address"].split(":")[1]
        free = cpu_work_rate(int(port))
        stack.apply(cpu_quota=0.25)
        limited = cpu_work_rate(int(port))
        stack.apply(cpu_quota=None)
        lifted = cpu_work_rate(int(port))
    finally:
        stack.down()
    # 10 ms of CPU per request: at most 25/s on a quarter of a core, whatever else the
    # machine does (other load only lowers the rates), and about 100/s without a quota.
    assert limited <= 0.25 * 100 * 1.25, (free, limited)
    assert free > 2 * limited and lifted > 2 * limited, (free, limited, lifted)


def test_unsupported_quota_says_what_to_do_instead():
    info = cpu_quota.Support(False, "none", "this system has no /sys/fs/cgroup (macOS or Windows)")
    with pytest.raises(StackError, match=r"app.cpu_quota needs Linux cgroups.*app.concurrency"):
        info.require()
