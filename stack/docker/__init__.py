"""The Docker backend: the same topology as a compose project, changed live through the same API.

    from stack.docker import DockerStack
    stack = DockerStack()
    stack.up()                       # builds missing images, then every service healthy
    stack.apply(replicas=6, strategy="round_robin")
    stack.down()

    python -m stack.docker up|down|status|scale|set|logs|build|render

Modules: `config` (pure renderers of the project's files), `compose` (the compose
model and its YAML; stack/compose.yml is its standalone output), `runtime` (generated
secrets and the files holding them; also the in-container `secrets-init`),
`images` (building the four images), `engine` (reaching Docker, with a clear error),
`state` (the state directory), `backend` (DockerStack, the reconciler).

Importing this package does not import the docker SDK (the app image runs
`python -m stack.docker.runtime` without it).
"""
from __future__ import annotations

__all__ = ["DockerStack", "render_compose", "EngineUnavailableError"]


def __getattr__(name):
    if name == "DockerStack":
        from .backend import DockerStack
        return DockerStack
    if name == "render_compose":
        from .compose import render_compose
        return render_compose
    if name == "EngineUnavailableError":
        from .engine import EngineUnavailableError
        return EngineUnavailableError
    raise AttributeError(name)
