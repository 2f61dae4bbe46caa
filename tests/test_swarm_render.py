"""The Swarm stack file: pure, no engine. stack/swarm-stack.yml must be the renderer's output."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stack.render.nginx import STRATEGY_DIRECTIVES
from stack.docker.config import render_nginx_conf
from stack.swarm.stackfile import (NGINX_SEED, NGINX_UPSTREAM, render_swarm_stack, repository_files, swarm_model,
                                    task_addresses, upstream_conf)
from stack.errors import ServiceFailedError
from stack.swarm.services import SwarmServices
from stack.topology import Topology

STACK = Path(__file__).resolve().parents[1] / "stack"


def test_committed_swarm_stack_matches_the_renderer():
    stale = [rel for rel, text in repository_files().items()
             if not (STACK / rel).exists() or (STACK / rel).read_text() != text]
    assert not stale, f"{stale} drifted from the renderer: run `python -m stack.swarm render` and commit"


def test_stack_file_parses_to_the_model():
    topology = Topology().with_changes(replicas=6, cpu_quota=0.5)
    assert yaml.safe_load(render_swarm_stack(topology)) == swarm_model(topology)


def test_the_app_is_one_service_with_the_articles_deploy_block():
    model = swarm_model(Topology().with_changes(replicas=6, cpu_quota=0.5))
    deploy = model["services"]["app"]["deploy"]
    assert deploy["replicas"] == 6
    assert deploy["resources"]["limits"] == {"cpus": "0.5", "memory": "512M"}
    assert not any(name.startswith("app-") for name in model["services"])


def test_nginx_seed_balances_over_every_task_and_is_copied_where_nginx_reads_it():
    assert "server tasks.app:8000 " in upstream_conf(Topology())
    before = swarm_model(Topology())["services"]["nginx"]
    after = swarm_model(Topology().with_changes(strategy="round_robin"))["services"]["nginx"]
    # The stack file a learner deploys carries the strategy: only the upstream config differs.
    assert before["configs"][0] == after["configs"][0] and before["configs"][1]["source"] != after["configs"][1]["source"]
    # Swarm mounts configs read-only: the seed is mounted elsewhere and copied to the file that
    # nginx.conf includes and nginx-start reads, then the image's own CMD runs.
    assert before["configs"][1]["target"] == NGINX_SEED
    assert f"include {NGINX_UPSTREAM};" in render_nginx_conf()
    assert f"UPSTREAM={NGINX_UPSTREAM}\n" in (STACK / "docker/images/scripts/nginx-start").read_text()
    script = before["entrypoint"][-1]
    assert script.startswith(f"cp {NGINX_SEED} {NGINX_UPSTREAM} && ")
    assert re.search(r'^CMD \["(\S+)"\]$', (STACK / "docker/images/nginx.Dockerfile").read_text(), re.M)[1] == \
        script.rsplit("exec ", 1)[1]
    # Host-mode ports: a new nginx task can bind only after the old one stopped.
    assert before["deploy"]["update_config"]["order"] == "stop-first"


def servers(text: str) -> list[list[str]]:
    return [line.split()[1:3] for line in text.splitlines() if line.strip().startswith("server ")]


def test_each_task_is_a_server_with_its_own_slots_weight_and_the_seed_ignores_weights():
    weighted = Topology().with_changes(weights=(3, 1, 1, 2))
    seed = upstream_conf(weighted)
    assert "server tasks.app:8000 weight=1 " in seed and "weight=3" not in seed
    live = upstream_conf(weighted, [(4, "10.0.1.9"), (2, "10.0.1.7"), (1, "10.0.1.12"), (3, "10.0.1.3")])
    assert servers(live) == [["10.0.1.12:8000", "weight=3"], ["10.0.1.7:8000", "weight=1"],
                             ["10.0.1.3:8000", "weight=1"], ["10.0.1.9:8000", "weight=2"]]
    assert STRATEGY_DIRECTIVES["least_conn"] in live
    # After a scale-down slots can have gaps: each task keeps its own slot's weight (app-4 is 2),
    # and a task beyond the weights (leaving, or mid-update) gets 1.
    assert servers(upstream_conf(weighted.with_changes(replicas=3, weights=(5, 1, 1)),
                                 [(2, "10.0.1.3"), (4, "10.0.1.5"), (3, "10.0.1.4")])) == \
        [["10.0.1.3:8000", "weight=1"], ["10.0.1.4:8000", "weight=1"], ["10.0.1.5:8000", "weight=1"]]
    assert servers(upstream_conf(weighted, [(2, "10.0.1.3"), (4, "10.0.1.5"), (1, "10.0.1.2")])) == \
        [["10.0.1.2:8000", "weight=3"], ["10.0.1.3:8000", "weight=1"], ["10.0.1.5:8000", "weight=2"]]
    # Mid rolling update two tasks share a slot: both serve, both listed.
    assert len(servers(upstream_conf(weighted, [(1, "10.0.1.2"), (1, "10.0.1.8"), (2, "10.0.1.3")]))) == 3
    # Without weights, still one server per task (a consistent hash places each on its ring by name).
    plain = upstream_conf(Topology().with_changes(replicas=2, strategy="consistent_hash"),
                          [(1, "10.0.1.2"), (2, "10.0.1.3")])
    assert servers(plain) == [["10.0.1.2:8000", "weight=1"], ["10.0.1.3:8000", "weight=1"]]


def test_task_addresses_are_read_on_the_stacks_network_without_the_prefix_length():
    def task(slot, *attachments):
        return {"Slot": slot, "NetworksAttachments": [{"Network": {"Spec": {"Name": net}}, "Addresses": addrs}
                                                      for net, addrs in attachments]}
    tasks = [task(2, ("ingress", ["10.255.0.7/16"]), ("s_default", ["10.0.1.7/24"])),
             task(1, ("s_default", ["10.0.1.12/24"])),
             task(3, ("s_default", [])),          # not attached yet: left out
             {"Slot": 4}]                         # no attachments at all
    assert task_addresses(tasks, "s_default") == [(2, "10.0.1.7"), (1, "10.0.1.12")]


def test_passwords_are_swarm_secrets_never_configs():
    model = swarm_model(Topology())
    secrets = {"pg-secret", "app-secret"}
    text = render_swarm_stack(Topology())
    assert not any(s in text for s in secrets)
    assert model["services"]["app"]["secrets"][0]["target"] == "/run/scalelab/app/config.json"
    assert model["networks"]["default"]["driver"] == "overlay"


def test_only_the_app_spreads_over_nodes_the_rest_stays_on_a_manager():
    """Host-mode ports listen on the node running the task, and a volume lives on one node: every
    published or stateful service is placed on a manager (the engine the backend talks to)."""
    services = swarm_model(Topology())["services"]
    assert "placement" not in services["app"]["deploy"]
    for name, svc in services.items():
        if name != "app":
            assert svc["deploy"]["placement"] == {"constraints": ["node.role == manager"]}, name


# -- shard servers (postgres.shards) --------------------------------------------------------------
def test_shard_servers_are_services_with_their_own_volume_port_and_configs():
    """One PostgreSQL service per shard, as in the compose project: one task, its own data volume,
    its port from the block (published like the other servers: the mover and the lessons reach each
    one from the host), its postgresql.conf, the shards' pg_hba.conf and empty schema, the primary's secrets."""
    from stack.ports import Ports
    topology = Topology().with_changes(shards=3)
    model = swarm_model(topology)
    services = model["services"]
    shards = [name for name in services if name.startswith("postgres-shard-")]
    assert shards == ["postgres-shard-1", "postgres-shard-2", "postgres-shard-3"]
    primary = services["postgres-primary"]
    for index, name in enumerate(shards, start=1):
        svc = services[name]
        assert svc["command"] == ["postgres-entry", "shard"]
        assert svc["deploy"]["replicas"] == 1
        assert svc["volumes"] == [f"shard-{index}-data:/var/lib/postgresql/data"]
        assert f"shard-{index}-data" in model["volumes"]
        assert svc["ports"] == [{"target": 5432, "published": Ports(topology.base_port).shard(index),
                                 "protocol": "tcp", "mode": "host"}]
        assert svc["secrets"] == primary["secrets"]
        assert svc["networks"] == ["default"]
        assert svc["deploy"]["placement"] == {"constraints": ["node.role == manager"]}
        targets = {c["target"]: c["source"] for c in svc["configs"]}
        assert set(targets) == {"/etc/scalelab/postgres/postgresql.conf", "/etc/scalelab/postgres/pg_hba.conf",
                                "/etc/scalelab/postgres/schema.sql"}
        assert targets["/etc/scalelab/postgres/postgresql.conf"].startswith(f"shard_{index}_conf_")
        assert all(source in model["configs"] for source in targets.values())
    assert "postgres-shard-4" not in services and "shard-4-data" not in model["volumes"]
    # The text each config names: the shard's own settings and the empty users table.
    from stack.swarm.stackfile import config_texts
    texts = config_texts(topology)
    assert "wal_level = 'minimal'" in texts["shard_2_conf"] and "port = 5432" in texts["shard_2_conf"]
    assert "CREATE TABLE" in texts["shard_schema"] and "INSERT" not in texts["shard_schema"].upper()


def test_the_app_tasks_reach_the_shards_by_service_name():
    import json
    from stack.swarm.stackfile import runtime_texts
    secrets = {"postgres_password": "pg-secret", "app_password": "app-secret", "redis_password": "r",
               "admin_token": "t"}
    config = json.loads(runtime_texts(Topology().with_changes(shards=2), secrets)["app_config"])
    dsns = config["shards"]["dsns"]
    assert sorted(dsns) == ["1", "2"]
    assert "host=postgres-shard-2 port=5432" in dsns["2"]
    assert config["shards"]["read"]["scheme"] == "consistent" and config["shards"]["read"]["count"] == 2
    assert json.loads(runtime_texts(Topology(), secrets)["app_config"])["shards"] is None


def test_a_partial_deploy_of_one_new_shard_carries_only_its_configs():
    """4 -> 5 shards deploys postgres-shard-5 alone (`only`): the running services are left as they are."""
    model = swarm_model(Topology().with_changes(shards=5), only=("postgres-shard-5",))
    assert list(model["services"]) == ["postgres-shard-5"]
    assert sorted(name.rsplit("_", 1)[0] for name in model["configs"]) == ["shard_5_conf", "shard_hba", "shard_schema"]
    assert sorted(model["secrets"]) == ["app_password", "postgres_password"]
    with pytest.raises(ValueError, match="only='postgres-shard-6' is not allowed"):
        swarm_model(Topology().with_changes(shards=5), only=("postgres-shard-6",))


def test_shards_render_to_parseable_yaml():
    topology = Topology().with_changes(shards=8, shard_scheme="jump")
    assert yaml.safe_load(render_swarm_stack(topology)) == swarm_model(topology)


class _Engine:
    """The two engine calls placement() makes, answering as a manager on node n1 would."""
    def __init__(self, tasks):
        self.api = self
        self._tasks = tasks

    def info(self):
        return {"Name": "manager-1", "Swarm": {"NodeID": "n1"}}

    def tasks(self, filters):
        assert filters == {"service": "scalelab_app"}
        return self._tasks


def _task(slot, node, state="running", port=None):
    status = {"State": state}
    if port:
        status["PortStatus"] = {"Ports": [{"PublishedPort": port, "TargetPort": 8000}]}
    return {"Slot": slot, "NodeID": node, "DesiredState": "running", "Status": status}


def test_placement_splits_running_tasks_by_node_and_ports_come_only_from_this_node():
    placement = SwarmServices(_Engine([_task(1, "n1", port=30001), _task(2, "n2", port=30002),
                                       _task(3, "n1", state="starting", port=30003), _task(4, "n1")]),
                              "scalelab").placement("app")
    assert placement.node_name == "manager-1"
    assert [t["Slot"] for t in placement.here] == [1, 4] and [t["Slot"] for t in placement.elsewhere] == [2]
    assert placement.ports() == {1: 30001}       # slot 2 is another node's port; slot 4 has none yet


class _Removals(SwarmServices):
    """remove_all() with the engine calls it makes recorded; `stuck` never loses its containers."""
    def __init__(self, stuck=()):
        super().__init__(None, "scalelab")
        self.calls, self.stuck = [], set(stuck)

    def _running_containers(self, short):
        self.calls.append(("list", short))
        return [f"{short}-container"]

    def remove(self, short):
        self.calls.append(("remove", short))

    def stop_now(self, container_ids):
        self.calls.append(("signal", *container_ids))

    def _wait(self, kind, short, timeout):
        self.calls.append((kind, short))
        if short in self.stuck:
            raise ServiceFailedError(f"{short}: containers still there {timeout} s after removal")

    def wait_gone(self, short, timeout=60):
        self._wait("wait", short, timeout)

    def wait_stopped(self, short, timeout=60):
        self._wait("wait stopped", short, timeout)


SHARDS = ["postgres-shard-1", "postgres-shard-2", "postgres-shard-3"]


def test_remove_all_removes_every_service_before_waiting_and_waits_for_all_when_one_is_stuck():
    services = _Removals()
    services.remove_all(SHARDS)
    # Each one's containers listed (a removed service's tasks are unlisted at once), every service
    # removed, then its containers signalled without waiting for Swarm's agent, then every wait.
    assert services.calls == ([("list", s) for s in SHARDS] + [("remove", s) for s in SHARDS] +
                              [("signal", f"{s}-container") for s in SHARDS] + [("wait", s) for s in SHARDS])
    stopped = _Removals()
    stopped.remove_all(SHARDS, until="stopped")       # the plan's stop: a free port is enough
    assert [c for c in stopped.calls if c[0].startswith("wait")] == [("wait stopped", s) for s in SHARDS]
    stuck = _Removals(stuck={"postgres-shard-1", "postgres-shard-2"})
    with pytest.raises(ServiceFailedError, match="postgres-shard-1"):     # the first failure
        stuck.remove_all(SHARDS)
    assert [c for c in stuck.calls if c[0] == "wait"] == [("wait", s) for s in SHARDS]
    with pytest.raises(ValueError, match="until='soon' is not allowed"):
        _Removals().remove_all(SHARDS, until="soon")


class _ScaledDown:
    """An engine (manager on node n1) right after a scale-down of the app from 4 to 2: slot 3 on
    n1 and slot 4 on n2 are leaving, slot 5 was still starting when Swarm dropped it. Records kills;
    a killed container no longer runs."""
    def __init__(self):
        self.api = self
        self.killed = []
        self.running = {"c1", "c2", "c3", "c4"}
        self._tasks = [self._task("t1", 1, "n1", "c1"), self._task("t2", 2, "n2", "c2"),
                       self._task("t3", 3, "n1", "c3", desired="shutdown"),
                       self._task("t4", 4, "n2", "c4", desired="shutdown"),
                       self._task("t5", 5, "n1", "c5", desired="shutdown", state="starting")]

    @staticmethod
    def _task(tid, slot, node, cid, desired="running", state="running"):
        return {"ID": tid, "Slot": slot, "NodeID": node, "DesiredState": desired,
                "Status": {"State": state, "ContainerStatus": {"ContainerID": cid}},
                "Spec": {"ContainerSpec": {"Image": "app"}}, "CreatedAt": "1"}

    def info(self):
        return {"Name": "manager-1", "Swarm": {"NodeID": "n1"}}

    def tasks(self, filters):
        return self._tasks

    def inspect_container(self, cid):
        return {"Config": {"StopSignal": "SIGQUIT"}}

    def kill(self, cid, signal):
        self.killed.append((cid, signal))
        self.running.discard(cid)

    def containers(self, filters, all=False):
        return [{"Id": c} for c in sorted(self.running)]

    def inspect_service(self, name):
        return {"Spec": {"Mode": {"Replicated": {"Replicas": 2}}, "TaskTemplate": {"ContainerSpec": {"Image": "app"}}},
                "UpdatedAt": "0"}


def test_a_scale_down_signals_only_the_leaving_running_tasks_of_this_node_and_counts_them_stopped():
    engine = _ScaledDown()
    services = SwarmServices(engine, "scalelab")
    assert not services._converged("app", 1e18, 60, set()), "slot 3 still runs: not converged"
    services.stop_leaving("app", 2, spare={"t9"})
    # Only slot 3: slot 4 runs on another node (Swarm stops it), slot 5 never ran, 1 and 2 stay;
    # with the signal Swarm's agent would send (the container's configured stop signal).
    assert engine.killed == [("c3", "SIGQUIT")]
    # Slot 3 has exited, although Swarm still reports it running; slot 4 on n2 still stops.
    assert [t["ID"] for t in services._still_running("app", [engine._tasks[2], engine._tasks[3]])] == ["t4"]
    engine._tasks[3]["Status"]["State"] = "shutdown"     # Swarm's agent on n2 did its part
    assert not services._converged("app", 1e18, 60, set()), "slot 5 is still starting: Swarm ends it"
    engine._tasks[4]["Status"]["State"] = "shutdown"
    assert services._converged("app", 1e18, 60, set())
    engine.killed.clear()
    engine.running.add("c3")
    services.stop_leaving("app", 2, spare={"t3"})        # nginx still names it: left to Swarm
    assert engine.killed == []


def test_status_says_when_published_ports_listen_wider_than_loopback():
    from stack.swarm.gateway import listening_note
    from stack.swarm.services import published_bindings
    listing = {"nginx": {"Ports": [{"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": 18080, "Type": "tcp"}]},
               "app-1": {"Ports": [{"PrivatePort": 8000, "Type": "tcp"}]}}          # not published
    assert published_bindings(listing) == {("127.0.0.1", 18080)}
    assert listening_note(published_bindings(listing)) is None
    listing["redis"] = {"Ports": [{"IP": "0.0.0.0", "PrivatePort": 6379, "PublicPort": 18081, "Type": "tcp"},
                                  {"IP": "::", "PrivatePort": 6379, "PublicPort": 18081, "Type": "tcp"}]}
    note = listening_note(published_bindings(listing))
    assert note.startswith("published ports listen on 0.0.0.0, ::, not 127.0.0.1 only"), note


def test_an_engine_that_cannot_show_its_gateway_bridge_gets_a_line_not_an_exception():
    from docker.errors import APIError
    from stack.swarm.gateway import loopback_bridge

    class Networks:
        def get(self, name):
            raise APIError("500 Server Error", explanation="the engine's network store is locked")

        def create(self, *args, **kwargs):
            raise AssertionError("nothing is made after a failed read")

    class Client:
        networks = Networks()

    line = loopback_bridge(Client())
    assert line.startswith("could not read docker_gwbridge (the engine's network store is locked)"), line
