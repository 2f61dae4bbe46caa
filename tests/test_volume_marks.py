"""Which existing data volumes `up` accepts (stack.docker.volumes), without an engine: the volumes'
labels are what the engine's volume list would return. The Docker tier checks the same against
real volumes (test_docker_stack.py, test_swarm_stack.py: *another_stack_made_is_refused*)."""
from __future__ import annotations

import pytest
from docker.errors import NotFound

from stack.docker.volumes import SECRETS_LABEL, refuse_foreign_volumes, secrets_mark, volume_labels
from stack.errors import StackError

OURS = {"postgres_password": "a" * 32}
THEIRS = {"postgres_password": "b" * 32}
OWNER = ("scalelab.project", "scalelab-18080")


class Volumes:
    """The engine's volume store as `refuse_foreign_volumes` reads it: get(name).attrs["Labels"]."""
    def __init__(self, **labels_by_name):
        self.labels = labels_by_name

    def get(self, name):
        if name not in self.labels:
            raise NotFound(name)
        return type("Volume", (), {"attrs": {"Labels": self.labels[name]}})()


def check(secrets, **labels_by_name):
    client = type("Client", (), {"volumes": Volumes(**labels_by_name)})()
    refuse_foreign_volumes(client, ["v_primary-data", "v_replica-data"], secrets, OWNER)


def test_the_mark_names_the_passwords_and_does_not_contain_them():
    assert secrets_mark(OURS) != secrets_mark(THEIRS) and len(secrets_mark(OURS)) == 16
    assert OURS["postgres_password"] not in secrets_mark(OURS)
    assert volume_labels(OURS, a="b") == {"a": "b", SECRETS_LABEL: secrets_mark(OURS)}


def test_volumes_made_with_this_states_passwords_or_absent_are_accepted():
    check(OURS)
    check(OURS, **{"v_primary-data": volume_labels(OURS)})
    check(OURS, **{"v_primary-data": {OWNER[0]: OWNER[1]}})       # made before volumes were marked


@pytest.mark.parametrize("secrets, labels, made_by, purge", [
    (OURS, volume_labels(THEIRS, **{OWNER[0]: OWNER[1]}), "docker backend project scalelab-18080", "docker"),
    (OURS, {"com.docker.stack.namespace": "scalelab-18080"}, "Swarm stack scalelab-18080", "swarm"),
    (None, {OWNER[0]: OWNER[1]}, "docker backend project scalelab-18080", "docker"),  # the state's secrets are gone
    (None, volume_labels(OURS), "unknown maker", None),
])
def test_volumes_another_stack_made_are_refused_by_name(secrets, labels, made_by, purge):
    with pytest.raises(StackError) as refused:
        check(secrets, **{"v_replica-data": labels})
    message = str(refused.value)
    assert f"v_replica-data ({made_by})" in message and "v_primary-data" not in message
    assert "Nothing was changed" in message and "`docker volume rm v_replica-data`" in message
    assert ("down --purge" in message) == (purge is not None)
    if purge:
        assert f"--backend {purge} down --purge" in message
