"""Pure parts of lesson 5's code."""
from stack.course import pooling


def test_little_pool_size_is_rate_times_holding_time():
    assert pooling.little_pool_size(200, 50) == 10
    assert pooling.little_pool_size(0, 50) == 0


def test_pools_needed_rounds_up_per_replica():
    assert pooling.pools_needed(400, 50, 2) == 10
    assert pooling.pools_needed(410, 50, 2) == 11
    assert pooling.pools_needed(100, 10, 4) == 1
