"""python -m stack.docker up | down | status | scale N | set FIELD=VALUE ... | logs SERVICE | build | render

The same commands as `python -m stack`, on the Docker backend (state directory:
--state-dir, else $SCALELAB_DOCKER_STATE, else a per-user temp dir), plus:

    build [--force]     build the four images (up() builds missing ones by itself)
    render [--check]    rewrite stack/compose.yml and stack/docker/conf/ from the renderer
                        (--check: only report whether they are up to date; exit 1 if not)
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StackError


def repository_files() -> dict[Path, str]:
    """What the repository keeps: the standalone compose.yml and the default topology's files."""
    from ..topology import Topology
    from .compose import render_compose
    from .config import project_files
    stack_dir = Path(__file__).resolve().parents[1]
    files = {stack_dir / "compose.yml": render_compose()}
    files.update({stack_dir / rel: text for rel, text in project_files(Topology()).items()})
    return files


def render(check: bool) -> int:
    stale = []
    for path, text in repository_files().items():
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    verb = "out of date" if check else "rewritten"
    for path in stale:
        print(f"{verb}: {path}")
    if not stale:
        print("compose.yml and docker/conf are up to date")
    return 1 if check and stale else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"]:
        return render(check="--check" in argv[1:])
    state_dir = None
    if "--state-dir" in argv:
        i = argv.index("--state-dir")
        state_dir = argv[i + 1] if i + 1 < len(argv) else None
    from .backend import DockerStack
    if "build" in argv:
        try:
            refs = DockerStack(state_dir).build(progress=lambda m: print(m, flush=True), force="--force" in argv)
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for kind, ref in refs.items():
            print(f"{kind:9} {ref}")
        return 0
    # Everything else is `python -m stack`'s own CLI, given a DockerStack.
    from .. import __main__ as cli
    stacks: dict = {}

    def get_stack(state_dir=None, backend=None):
        key = str(state_dir)
        if key not in stacks:
            stacks[key] = DockerStack(state_dir)
        return stacks[key]

    cli.get_stack = get_stack
    try:
        return cli.main(argv)
    except StackError as exc:    # e.g. no engine: raised before the CLI's own handler runs
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
