"""The Swarm stack file: pure, no engine. stack/swarm-stack.yml must be the renderer's output."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stack.errors import TopologyError
from stack.swarm.stackfile import render_swarm_stack, repository_files, swarm_model, upstream_conf
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


def test_nginx_balances_over_every_task_and_rotates_on_a_strategy_change():
    assert "server tasks.app:8000 " in upstream_conf(Topology())
    before = swarm_model(Topology())["services"]["nginx"]["configs"]
    after = swarm_model(Topology().with_changes(strategy="round_robin"))["services"]["nginx"]["configs"]
    assert before[0] == after[0] and before[1]["source"] != after[1]["source"]   # only the upstream rotates
    # Host-mode ports: the new nginx can bind only after the old one stopped.
    assert swarm_model(Topology())["services"]["nginx"]["deploy"]["update_config"]["order"] == "stop-first"


def test_weights_are_refused_with_the_reason():
    with pytest.raises(TopologyError, match="balancer.weights.*interchangeable"):
        upstream_conf(Topology().with_changes(weights=(1, 1, 1, 5)))


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
