"""python -m stack.swarm render [--check]: rewrite (or check) stack/swarm-stack.yml and its upstream.
python -m stack.swarm gateway-bridge: before `docker swarm init`, make this engine's docker_gwbridge
bind published ports on 127.0.0.1 (stack.swarm.gateway; DOCKER_HOST names the engine)."""
from __future__ import annotations

import sys
from pathlib import Path

from .stackfile import repository_files

STACK_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    if argv[:1] == ["gateway-bridge"]:
        from ..docker.engine import connect
        from .gateway import loopback_bridge
        print(loopback_bridge(connect()))
        return 0
    if argv[:1] != ["render"]:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    stale = [rel for rel, text in repository_files().items()
             if not (STACK_DIR / rel).exists() or (STACK_DIR / rel).read_text() != text]
    if "--check" in argv:
        for rel in stale:
            print(f"drifted from the renderer: stack/{rel}")
        return 1 if stale else 0
    for rel in stale:
        path = STACK_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(repository_files()[rel])
        print(f"rewritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
