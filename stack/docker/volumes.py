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

from docker.errors import NotFound

from ..errors import StackError

SECRETS_LABEL = "scalelab.secrets"


def secrets_mark(secrets: dict) -> str:
    """Names the passwords a volume was initialised with without revealing them."""
    return hashlib.sha256(b"scalelab data volume\0" + secrets["postgres_password"].encode()).hexdigest()[:16]


def volume_labels(secrets: dict, **labels: str) -> dict:
    return {**labels, SECRETS_LABEL: secrets_mark(secrets)}


def refuse_foreign_volumes(client, names: list[str], secrets: dict | None, owner: tuple[str, str]) -> None:
    """Raise StackError (nothing changed) when a volume in `names` exists but was not made with
    `secrets` (None: this state directory has none yet, so whatever made the volume used others).
    `owner`: the label (name, value) this backend put on its volumes before they carried a mark;
    such a volume counts as this state's when the state has secrets."""
    foreign = {}
    for name in names:
        try:
            labels = client.volumes.get(name).attrs.get("Labels") or {}
        except NotFound:
            continue
        mark = labels.get(SECRETS_LABEL)
        if secrets is not None and (mark == secrets_mark(secrets)
                                    or (mark is None and labels.get(owner[0]) == owner[1])):
            continue
        foreign[name] = _made_by(labels)
    if foreign:
        listed = "; ".join(f"{name} ({maker})" for name, (maker, _) in foreign.items())
        purges = sorted({f"`python -m stack --backend {backend} down --purge`"
                         for _, backend in foreign.values() if backend})
        raise StackError(
            f"data volume(s) made by another stack exist: {listed}. Their PostgreSQL was initialised with "
            f"passwords this state directory does not hold, so every login would fail. Nothing was changed. "
            f"If their data is not needed: `docker volume rm {' '.join(foreign)}`"
            + (f" (or {' / '.join(purges)} with the state directory that made them)" if purges else "")
            + "; else bring that stack back with the backend and state directory that made it.")


def _made_by(labels: dict) -> tuple[str, str | None]:
    """Who made a volume, and the backend that can purge it."""
    if "com.docker.stack.namespace" in labels:
        return f"Swarm stack {labels['com.docker.stack.namespace']}", "swarm"
    if "scalelab.project" in labels:
        return f"docker backend project {labels['scalelab.project']}", "docker"
    return "unknown maker", None
