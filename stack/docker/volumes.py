"""Data volumes that another stack initialised: refused before anything starts.

A PostgreSQL data volume keeps the passwords it was initialised with. It outlives the state
directory that holds them (a reboot clears /tmp, not the engine's data root), and the docker and
swarm backends name it alike (`scalelab-18080_primary-data`). Mounted by a stack with other
passwords, every login fails and the stack looks broken in confusing ways (503s, apps that never
report their new settings). So each volume carries a mark of the passwords it was made for (a
hash, not the password), and `up` checks the mark before it starts anything.
"""
from __future__ import annotations

import hashlib
from datetime import datetime

from docker.errors import NotFound

from ..errors import StackError

SECRETS_LABEL = "scalelab.secrets"
# Docker reports a volume's creation time in whole seconds.
CLOCK_SLACK_S = 2.0


def secrets_mark(secrets: dict) -> str:
    """Names the passwords a volume was initialised with without revealing them."""
    return hashlib.sha256(b"scalelab data volume\0" + secrets["postgres_password"].encode()).hexdigest()[:16]


def volume_labels(secrets: dict, **labels: str) -> dict:
    return {**labels, SECRETS_LABEL: secrets_mark(secrets)}


def refuse_foreign_volumes(client, names: list[str], state, owner: tuple[str, str]) -> None:
    """Raise StackError (nothing changed) when a volume in `names` exists but was not made with the
    passwords of `state` (a DockerState; none yet: whatever made the volume used others).
    `owner`: the label (name, value) this backend put on its volumes before they carried a mark;
    such a volume counts as the state's own if it was made after the state's passwords were."""
    secrets = state.secrets() if state.has_secrets() else None
    foreign = {}
    for name in names:
        try:
            attrs = client.volumes.get(name).attrs
        except NotFound:
            continue
        labels = attrs.get("Labels") or {}
        mark = labels.get(SECRETS_LABEL)
        ours = labels.get(owner[0]) == owner[1]
        if secrets is not None and (mark == secrets_mark(secrets) or (
                mark is None and ours and _created_s(attrs) >= state.secrets_made_at() - CLOCK_SLACK_S)):
            continue
        foreign[name] = (labels, ours and mark is None)
    if foreign:
        raise StackError(_explain(foreign, state))


def _created_s(attrs: dict) -> float:
    try:
        return datetime.fromisoformat(attrs["CreatedAt"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0         # unknown: older than any passwords, so not taken for this state's


def _explain(foreign: dict, state) -> str:
    listed = "; ".join(f"{name} ({_maker(labels)[0]})" for name, (labels, _) in foreign.items())
    why = ("this state directory ({}) holds no passwords for them (was it deleted? a reboot clears /tmp)"
           .format(state.path) if all(own for _, own in foreign.values()) and not state.has_secrets()
           else "they were initialised with passwords this state directory does not hold")
    frees = sorted({_maker(labels)[1] for labels, _ in foreign.values()} - {None})
    return (f"data volume(s) this state directory cannot open exist: {listed}: {why}, so every PostgreSQL login would "
            f"fail. Nothing was changed. If their data is not needed, free and delete them: "
            + "".join(f"{step}; " for step in frees)
            + f"then `docker volume rm {' '.join(foreign)}`. Otherwise bring that stack back with the backend "
            f"and state directory that made it.")


def _maker(labels: dict) -> tuple[str, str | None]:
    """Who made a volume, and the command that removes what may still hold it."""
    if "com.docker.stack.namespace" in labels:
        name = labels["com.docker.stack.namespace"]
        return f"Swarm stack {name}", f"`docker stack rm {name}`"
    if "scalelab.project" in labels:
        project = labels["scalelab.project"]
        return (f"docker backend project {project}",
                f"`docker rm -f $(docker ps -aq --filter label=scalelab.project={project})`")
    return "unknown maker", None
