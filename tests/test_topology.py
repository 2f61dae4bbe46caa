"""The topology: the article's defaults, validation that names field/value/allowed, changes."""
import pytest

from stack.errors import TopologyError
from stack.topology import Topology


def test_defaults_follow_the_article():
    t = Topology()
    assert t.app.replicas == 4
    assert t.balancer.strategy == "least_conn" and t.balancer.keepalive == 32
    assert (t.app.write_pool, t.app.read_pool) == (20, 40)
    assert (t.app.pool_timeout_s, t.app.pool_idle_s) == (2.0, 30.0)
    assert t.cache.ttl_s == 300
    assert t.pgbouncer.enabled and t.pgbouncer.mode == "transaction"


@pytest.mark.parametrize("changes, field, fragment", [
    ({"replicas": 0}, "app.replicas", "from 1 to 16"),
    ({"replicas": -1}, "app.replicas", "from 1 to 16"),
    ({"replicas": 100}, "app.replicas", "from 1 to 16"),
    ({"replicas": 2.5}, "app.replicas", "integer"),
    ({"strategy": "foo"}, "balancer.strategy", "'least_conn'"),
    ({"weights": (1, 0, 1, 1)}, "balancer.weights[1]", "from 1 to 100"),
    ({"weights": (1, 2)}, "balancer.weights", "one weight per replica (4 values)"),
    ({"ttl_s": -5}, "cache.ttl_s", "from 0 to 86400"),
    ({"mode": "bogus"}, "pgbouncer.mode", "'transaction'"),
    ({"synchronous_commit": "maybe"}, "postgres.synchronous_commit", "'remote_apply'"),
    ({"policy": "lru"}, "cache.policy", "'allkeys-lru'"),
    ({"base_port": 80}, "base_port", "from 1024"),
    ({"replicaz": 3}, "replicaz", "a known field"),
])
def test_bad_values_name_field_value_and_what_is_allowed(changes, field, fragment):
    with pytest.raises(TopologyError) as info:
        Topology().with_changes(**changes)
    message = str(info.value)
    assert info.value.field == field
    bad_value = 0 if field == "balancer.weights[1]" else list(changes.values())[0]
    assert message.startswith(f"{field}={bad_value!r} is not allowed: ")
    assert fragment in message


def test_with_changes_by_leaf_and_dotted_name():
    t = Topology().with_changes(strategy="round_robin", **{"cache.ttl_s": 30})
    assert t.balancer.strategy == "round_robin" and t.cache.ttl_s == 30
    assert Topology().balancer.strategy == "least_conn"   # immutable: the original is untouched


def test_scaling_keeps_weights_of_remaining_replicas():
    t = Topology().with_changes(weights=[3, 1, 2, 1])
    assert t.with_changes(replicas=2).balancer.weights == (3, 1)
    assert t.with_changes(replicas=6).balancer.weights == (3, 1, 2, 1, 1, 1)


def test_dict_round_trip_and_unknown_keys():
    t = Topology().with_changes(replicas=3, weights=(1, 2, 3), ttl_s=5)
    assert Topology.from_dict(t.to_dict()) == t
    with pytest.raises(TopologyError, match="cache.ttl"):
        Topology.from_dict({"cache": {"ttl": 5}})
