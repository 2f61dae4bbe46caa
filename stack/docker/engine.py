"""Reaching a Docker engine, with an error that says what to do when there is none."""
from __future__ import annotations

import os

from ..errors import StackError


class EngineUnavailableError(StackError):
    """No Docker engine answered."""


def _where() -> str:
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "the default socket unix:///var/run/docker.sock (DOCKER_HOST is not set)"


def connect(timeout: float = 60):
    """A docker SDK client that has answered a ping; EngineUnavailableError otherwise."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:   # pragma: no cover - the docker SDK is in requirements.txt
        raise EngineUnavailableError(
            f"the docker SDK is not installed ({exc}): pip install docker (it is pinned in requirements.txt)") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (DockerException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "Permission denied" in reason or "PermissionError" in reason:
            hint = (" Your user may not use that socket: add it to the `docker` group "
                    "(sudo usermod -aG docker $USER, then log in again) or use rootless Docker.")
        raise EngineUnavailableError(
            f"no Docker engine is reachable at {_where()}: {reason}.{hint} "
            f"To fix: start Docker (Docker Desktop; or `sudo systemctl start docker`; or run `dockerd`), "
            f"or set DOCKER_HOST to a running engine's socket (the CI tier's engine: "
            f"`bash stack/scripts/docker-tier.sh` starts its own). "
            f"Without Docker, use the local backend: stack.get_stack(backend='local').") from None


def exec_in(client, container_id: str, cmd: list[str]) -> str:
    """Run `cmd` in a running container; its output, or StackError with the exit code and output."""
    result = client.api.exec_create(container_id, cmd)
    output = client.api.exec_start(result["Id"]).decode(errors="replace")
    code = client.api.exec_inspect(result["Id"])["ExitCode"]
    if code != 0:
        raise StackError(f"`{' '.join(cmd)}` in container {container_id[:12]} failed (exit {code}): "
                         f"{output.strip()}")
    return output
