"""Pure parts of lesson 5's code."""
from stack.course import pooling


def test_little_pool_size_is_rate_times_holding_time():
    assert pooling.little_pool_size(200, 50) == 10
    assert pooling.little_pool_size(0, 50) == 0


def test_pools_needed_rounds_up_per_replica():
    assert pooling.pools_needed(400, 50, 2) == 10
    assert pooling.pools_needed(410, 50, 2) == 11
    assert pooling.pools_needed(100, 10, 4) == 1


def test_stats_delta_is_per_transaction_in_milliseconds():
    before = {"total_xact_count": 100, "total_xact_time": 1_000_000, "total_wait_time": 0}
    after = {"total_xact_count": 300, "total_xact_time": 5_000_000, "total_wait_time": 10_000_000}
    after = {**after, "total_xact_time": 15_000_000}
    assert pooling.stats_delta(before, after) == {"transactions": 200, "xact_ms": 70.0, "wait_ms": 50.0,
                                                  "server_ms": 20.0}
    assert pooling.stats_delta(after, after)["wait_ms"] == 0.0


def test_a_poller_reads_until_the_block_ends_and_shares_what_it_opened():
    import contextlib
    import time

    from stack.course.poller import Poller

    class Counting(Poller):
        opened_times = 0

        @contextlib.contextmanager
        def opened(self):
            Counting.opened_times += 1
            yield "conn"

        def poll(self, shared):
            self.seen = getattr(self, "seen", []) + [shared]

    with Counting(0.01) as poller:
        time.sleep(0.1)
    count = len(poller.seen)
    time.sleep(0.05)
    assert count >= 2 and len(poller.seen) == count, "polls while the block runs, none after it"
    assert set(poller.seen) == {"conn"} and Counting.opened_times == 1
    readings = []
    with Poller(10, lambda: readings.append(1)):
        pass
    assert readings == [1], "one reading even when the block ends at once"

    def fails():
        raise ConnectionError("too many clients already")
    try:
        with Poller(0.01, fails):
            time.sleep(0.05)
    except RuntimeError as exc:
        assert "too many clients already" in str(exc)
    else:
        raise AssertionError("a poller that failed must say so, not leave its readings empty")
