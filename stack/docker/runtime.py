"""Generated secrets and the files that hold them (the project's runtime directory).

    python -m stack.docker.runtime init TOPOLOGY_JSON RUN_DIR

is the standalone compose.yml's one-shot `secrets-init` service: on the first `docker
compose up` it generates the passwords and the admin token, then (every time) writes
the app config, PgBouncer's userlist and Redis' password file into the `runtime`
volume the other services mount. A DockerStack calls `write_runtime(...)` itself, on
the host, into its state directory.

Imports nothing beyond the standard library and the pure renderers: it runs inside
the app image.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..files import write_atomic
from ..topology import Topology
from ..secrets import new_secrets
from .config import runtime_files


def write_runtime(run_dir: Path, topology: Topology, secrets: dict, shards="topology") -> list[str]:
    """Write the runtime files that changed; returns their paths (relative to run_dir).

    The files are world-readable *inside* run_dir, which the caller keeps where only its
    owner can reach it (a 0700 state directory, or a Docker volume): each service reads its
    files as its own unprivileged user (postgres, redis, scalelab) through a mount.
    `shards`: the app config's shard routing, when not the topology's (stack.resharding's phases).
    """
    run_dir = Path(run_dir)
    changed = []
    for rel, text in runtime_files(topology, secrets, shards).items():
        path = run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o755)
        if not path.exists() or path.read_text() != text:
            write_atomic(path, text, 0o644)
            changed.append(rel)
    return changed


def init(topology_json: str, run_dir: str) -> int:
    """The secrets-init service: generate secrets once, then (re)write the runtime files."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o755)
    store = run / "secrets.json"
    if store.exists():
        values = json.loads(store.read_text())
    else:
        values = new_secrets()
        write_atomic(store, json.dumps(values), 0o600)   # root-only: the services read their own files
    topology = Topology.from_dict(json.loads(Path(topology_json).read_text()))
    changed = write_runtime(run, topology, values)
    print(f"secrets-init: {len(changed)} runtime files (re)written in {run}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "init":
        print("usage: python -m stack.docker.runtime init TOPOLOGY_JSON RUN_DIR", file=sys.stderr)
        return 2
    return init(argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
