"""Which existing data volumes `up` accepts (stack.docker.volumes), without an engine: the volumes'
labels and creation times are what the engine's volume list would return; the state directory is
real. The Docker tier checks the same against real volumes (test_docker_stack.py,
test_swarm_stack.py: *another_stack_made_is_refused*)."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import pytest
from docker.errors import NotFound

from stack.docker.state import DockerState
from stack.docker.volumes import SECRETS_LABEL, refuse_foreign_volumes, secrets_mark, volume_labels
from stack.errors import StackError

OWNER = ("scalelab.project", "scalelab-18080")
OTHER = {"postgres_password": "b" * 32}


class Volumes:
    """The engine's volume store as `refuse_foreign_volumes` reads it: get(name).attrs."""
    def __init__(self, volumes: dict):
        self.volumes = volumes

    def get(self, name):
        if name not in self.volumes:
            raise NotFound(name)
        labels, created = self.volumes[name]
        stamp = datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return type("Volume", (), {"attrs": {"Labels": labels, "CreatedAt": stamp}})()


@pytest.fixture
def state(tmp_path):
    s = DockerState(tmp_path / "state")
    s.secrets()
    return s


def check(state, labels, created=None):
    """`created`: seconds after the state's passwords were made (None: a minute after)."""
    created = state.secrets_made_at() + (60 if created is None else created)
    client = type("Client", (), {"volumes": Volumes({"v_replica-data": (labels, created)})})()
    refuse_foreign_volumes(client, ["v_primary-data", "v_replica-data"], state, OWNER)


def refused(state, labels, created=None) -> str:
    with pytest.raises(StackError) as error:
        check(state, labels, created)
    message = str(error.value)
    assert "Nothing was changed" in message and "`docker volume rm v_replica-data`" in message, message
    assert "v_primary-data" not in message, message
    return message


def test_the_mark_names_the_passwords_and_does_not_contain_them(state):
    ours = state.secrets()
    assert secrets_mark(ours) != secrets_mark(OTHER) and len(secrets_mark(ours)) == 16
    assert ours["postgres_password"] not in secrets_mark(ours)
    assert volume_labels(ours, a="b") == {"a": "b", SECRETS_LABEL: secrets_mark(ours)}


def test_volumes_made_with_this_states_passwords_or_absent_are_accepted(state):
    client = type("Client", (), {"volumes": Volumes({})})()
    refuse_foreign_volumes(client, ["v_primary-data"], state, OWNER)
    check(state, volume_labels(state.secrets()))
    check(state, {OWNER[0]: OWNER[1]}, created=60)          # made before volumes were marked, after the passwords


def test_an_unmarked_volume_older_than_this_states_passwords_is_not_taken_for_its_own(state):
    """A state directory deleted, then passwords made anew (any call that needs them): the volume
    the old passwords initialised must not pass for one the new ones did."""
    assert "Swarm" not in refused(state, {OWNER[0]: OWNER[1]}, created=-3600)


@pytest.mark.parametrize("labels, maker, frees", [
    (volume_labels(OTHER, **{OWNER[0]: OWNER[1]}), "docker backend project scalelab-18080",
     "docker ps -aq --filter label=scalelab.project=scalelab-18080"),
    ({"com.docker.stack.namespace": "scalelab-18080"}, "Swarm stack scalelab-18080", "docker stack rm scalelab-18080"),
    (volume_labels(OTHER), "unknown maker", None),
])
def test_volumes_another_stack_made_are_refused_naming_the_maker_and_what_frees_them(state, labels, maker, frees):
    message = refused(state, labels)
    assert f"v_replica-data ({maker})" in message, message
    assert "initialised with passwords this state directory does not hold" in message
    assert (frees in message) if frees else ("docker stack rm" not in message and "docker rm" not in message)


def test_a_state_directory_without_passwords_says_so_and_where(tmp_path):
    fresh = DockerState(tmp_path / "fresh")
    client = type("Client", (), {"volumes": Volumes({"v_replica-data": ({OWNER[0]: OWNER[1]}, time.time())})})()
    with pytest.raises(StackError) as error:
        refuse_foreign_volumes(client, ["v_replica-data"], fresh, OWNER)
    message = str(error.value)
    assert f"this state directory ({fresh.path}) holds no passwords for them" in message, message
    assert not fresh.has_secrets() and not os.path.exists(fresh.path / "secrets.json")
