"""stack.plan: scripted histories in, actions out; no servers, no clock.

Each history is a sequence of topology changes applied to a stack whose running
services are tracked the way a backend would after executing the actions.
"""
from __future__ import annotations

import dataclasses

import pytest

from stack import plan as P
from stack.errors import StackError
from stack.topology import SECTIONS, Topology

BASE = Topology()
ALL = set(P.services_for(BASE))


def kinds(actions) -> list[str]:
    return [a.kind for a in actions]


def execute(running: set, actions) -> set:
    """What a backend's running set is after the actions (START adds, STOP removes)."""
    running = set(running)
    for action in actions:
        if action.kind == P.START:
            running |= set(action.services)
        elif action.kind == P.STOP:
            running -= set(action.services)
    return running


def replay(history):
    """[(changes, expected kinds), ...] from a fresh start; asserts each step."""
    old, running = None, set()
    for changes, expected in history:
        new = (old or BASE).with_changes(**changes)
        actions = P.plan(old, new, running)
        assert kinds(actions) == expected, (changes, [str(a) for a in actions])
        running, old = execute(running, actions), new
    return old, running


def test_first_up_starts_everything_in_start_order():
    actions = P.plan(None, BASE, set())
    assert kinds(actions) == [P.START]
    assert actions[0].services == tuple(P.services_for(BASE))
    assert actions[0].services[-1] == "nginx"


def test_nothing_changed_means_no_action():
    assert P.plan(BASE, BASE, ALL) == []


def test_a_scripted_history_does_the_least_each_time():
    replay([
        ({}, [P.START]),
        ({"strategy": "round_robin"}, [P.RELOAD_NGINX]),
        ({"replicas": 6}, [P.START, P.RELOAD_NGINX]),
        ({"replicas": 2}, [P.RELOAD_NGINX, P.STOP]),
        ({"ttl_s": 30}, [P.PUSH_APP_CONFIG]),
        ({"replica_delay_ms": 1500}, [P.RELOAD_POSTGRES, P.PUSH_APP_CONFIG]),
        ({"maxmemory_mb": 32, "policy": "allkeys-lfu"}, [P.SET_REDIS]),
        ({"pool_size": 5}, [P.RELOAD_PGBOUNCER]),
        ({"enabled": False}, [P.PUSH_APP_CONFIG, P.STOP]),
        ({"enabled": True}, [P.START, P.PUSH_APP_CONFIG]),
        ({"cpu_quota": 0.5}, [P.SET_CPU_QUOTA]),
        ({"max_connections": 300}, [P.RESTART_POSTGRES]),
        ({}, []),
    ])


def test_scaling_down_drains_nginx_before_stopping_replicas():
    actions = P.plan(BASE, BASE.with_changes(replicas=2), ALL)
    assert kinds(actions) == [P.RELOAD_NGINX, P.STOP]
    assert actions[0].drain_s > 0
    assert actions[1].services == ("app-3", "app-4")


def test_scaling_up_starts_replicas_before_nginx_sends_them_traffic():
    actions = P.plan(BASE, BASE.with_changes(replicas=6), ALL)
    assert actions[0] == P.Action(P.START, ("app-5", "app-6"))
    assert actions[1].kind == P.RELOAD_NGINX and actions[1].drain_s == 0


def test_max_connections_restarts_in_an_order_the_standby_accepts():
    grow = P.plan(BASE, BASE.with_changes(max_connections=300), ALL)[0]
    assert grow.services == ("postgres-replica", "postgres-primary") and not grow.replay
    shrink = P.plan(BASE, BASE.with_changes(max_connections=100), ALL)[0]
    assert shrink.services == ("postgres-primary", "postgres-replica") and shrink.replay


def test_pgbouncer_off_pushes_config_before_stopping_it():
    actions = P.plan(BASE, BASE.with_changes(enabled=False), ALL)
    assert kinds(actions) == [P.PUSH_APP_CONFIG, P.STOP]
    assert actions[0].expect["via_pgbouncer"] is False
    assert actions[1].services == ("pgbouncer",)


def test_settings_actions_carry_what_the_server_must_report():
    new = BASE.with_changes(synchronous_commit="remote_apply", replica_delay_ms=250,
                            maxmemory_mb=16, mode="session", ttl_s=5)
    by_kind = {a.kind: a for a in P.plan(BASE, new, ALL)}
    assert by_kind[P.RELOAD_POSTGRES].expect == {
        "postgres-primary": {"synchronous_commit": "remote_apply", "max_connections": "200"},
        "postgres-replica": {"recovery_min_apply_delay": "250", "max_connections": "200"}}
    assert by_kind[P.SET_REDIS].expect == {"maxmemory": str(16 * 1024 * 1024), "maxmemory-policy": "allkeys-lru"}
    assert by_kind[P.RELOAD_PGBOUNCER].expect["pool_mode"] == "session"
    assert by_kind[P.PUSH_APP_CONFIG].expect["ttl_s"] == 5


def test_a_dead_service_is_started_and_gets_no_live_change():
    running = ALL - {"redis", "app-2"}
    actions = P.plan(BASE, BASE.with_changes(maxmemory_mb=8, ttl_s=9), running)
    assert actions[0] == P.Action(P.START, ("redis", "app-2"))
    assert P.SET_REDIS not in kinds(actions)        # it starts with the new file
    push = next(a for a in actions if a.kind == P.PUSH_APP_CONFIG)
    assert "app-2" not in push.services


def test_base_port_change_of_a_running_stack_is_refused():
    with pytest.raises(StackError, match="base_port=19000 differs.*down"):
        P.plan(BASE, BASE.with_changes(base_port=19000), ALL)
    assert kinds(P.plan(BASE, BASE.with_changes(base_port=19000), set())) == [P.START]


def test_every_topology_field_has_a_rule():
    assert set(P.topology_fields()) == set(P.FIELD_RULES), \
        "a Topology field without a rule in stack.plan.FIELD_RULES (or a rule for a field that is gone)"
    for name, rules in P.FIELD_RULES.items():
        assert rules and all(r in P.KINDS or r in ("scale", "pgbouncer", "shards", "refuse") for r in rules), name


def test_every_field_change_maps_to_the_least_action():
    """One change per field, on a running default stack: the actions its rule names, no more."""
    samples = {"app.replicas": 5, "app.concurrency": 8, "app.cpu_quota": 0.5, "app.write_pool": 5,
               "app.read_pool": 5, "app.pool_timeout_s": 1.0, "app.pool_idle_s": 10.0, "app.read_from": "primary",
               "balancer.strategy": "ip_hash", "balancer.weights": (1, 2, 3, 4), "balancer.keepalive": 0,
               "balancer.max_fails": 3, "balancer.fail_timeout_s": 5, "balancer.next_upstream": ("error",),
               "postgres.replica_delay_ms": 100, "postgres.synchronous_commit": "off",
               "postgres.max_connections": 100, "pgbouncer.enabled": False, "pgbouncer.mode": "session",
               "pgbouncer.pool_size": 7, "pgbouncer.max_client_conn": 50, "cache.ttl_s": 1,
               "cache.maxmemory_mb": 8, "cache.policy": "noeviction", "postgres.shards": 2,
               "postgres.shard_scheme": "jump"}
    assert set(samples) == set(P.FIELD_RULES) - {"base_port"}
    sharded = BASE.with_changes(shards=3)
    for name, value in samples.items():
        # A shard scheme matters once there are shards: change it on a sharded stack.
        base = sharded if name == "postgres.shard_scheme" else BASE
        actions = P.plan(base, base.with_changes(**{name: value}), set(P.services_for(base)))
        expected = {r for r in P.FIELD_RULES[name] if r in P.KINDS}
        if {"scale", "pgbouncer", "shards"} & set(P.FIELD_RULES[name]):
            expected |= {P.START} if kinds(actions)[0] == P.START else {P.STOP}
        assert set(kinds(actions)) == expected, (name, [str(a) for a in actions])
        assert all(name in a.why for a in actions if a.kind not in (P.START, P.STOP)), name


def test_a_field_without_a_rule_makes_plan_fail(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Extended(SECTIONS["cache"]):
        shards: int = 1
    monkeypatch.setitem(SECTIONS, "cache", Extended)
    new = dataclasses.replace(BASE, cache=Extended(shards=2))
    old = dataclasses.replace(BASE, cache=Extended())
    with pytest.raises(StackError, match="cache.shards.*no rule"):
        P.plan(old, new, ALL)


def test_restore_plan_undoes_a_failed_scale_without_starting_the_dead():
    new = BASE.with_changes(replicas=6, ttl_s=9)
    ran_before = ALL - {"redis"}                          # redis had died before the change
    running = ran_before | {"app-5"}                      # the change failed starting app-6
    actions = P.restore_plan(new, BASE, running, ran_before)
    assert kinds(actions) == [P.PUSH_APP_CONFIG, P.RELOAD_NGINX, P.STOP]
    assert actions[0].expect["ttl_s"] == 300
    assert actions[-1].services == ("app-5",)


def test_stop_order_is_front_to_back():
    actions = P.plan(BASE, BASE.with_changes(replicas=1, enabled=False), ALL)
    stop = actions[-1]
    assert stop.services == ("app-2", "app-3", "app-4", "pgbouncer")


# -- shards ---------------------------------------------------------------------------------------

def test_shards_start_are_loaded_then_move_online_then_stop_last():
    replay([
        ({}, [P.START]),
        ({"shards": 4}, [P.START, P.RESHARD, P.PUSH_APP_CONFIG]),
        ({"shards": 5}, [P.START, P.RESHARD, P.PUSH_APP_CONFIG]),
        ({"shard_scheme": "modulo"}, [P.RESHARD, P.PUSH_APP_CONFIG]),
        ({"shards": 2}, [P.RESHARD, P.PUSH_APP_CONFIG, P.STOP]),
        ({"shards": 0}, [P.RESHARD, P.PUSH_APP_CONFIG, P.STOP]),
        ({"shard_scheme": "jump"}, [P.PUSH_APP_CONFIG]),       # no shards: nothing to move
    ])


def test_a_reshard_names_both_maps_and_the_new_shard_starts_first():
    two = BASE.with_changes(shards=2)
    actions = P.plan(two, two.with_changes(shards=3), set(P.services_for(two)))
    assert actions[0] == P.Action(P.START, ("postgres-shard-3",))
    move = actions[1]
    assert move.expect == {"from": {"scheme": "consistent", "count": 2, "vnodes": 64},
                           "to": {"scheme": "consistent", "count": 3, "vnodes": 64}}
    assert actions[2].expect["shards"]["read"]["count"] == 3
    shrink = P.plan(two, two.with_changes(shards=1), set(P.services_for(two)))
    assert shrink[-1] == P.Action(P.STOP, ("postgres-shard-2",))


def test_a_first_start_with_shards_loads_them():
    actions = P.plan(None, BASE.with_changes(shards=2), set())
    assert kinds(actions) == [P.START, P.RESHARD]
    assert actions[1].expect["from"] is None and actions[1].expect["to"]["count"] == 2
    assert "postgres-shard-2" in actions[0].services


def test_shard_servers_stop_with_the_databases():
    assert P.stop_rank("postgres-shard-3") == P.stop_rank("postgres-replica") > P.stop_rank("app-1")


def test_stop_stages_group_front_to_back_keeping_the_given_order_within_a_stage():
    given = ["postgres-primary", "postgres-shard-2", "redis", "app-2", "postgres-replica", "nginx",
             "pgbouncer", "app-1"]
    assert P.stop_stages(given) == [["nginx"], ["app-2", "app-1"], ["redis", "pgbouncer"],
                                    ["postgres-shard-2", "postgres-replica"], ["postgres-primary"]]
    assert P.stop_stages([]) == []
