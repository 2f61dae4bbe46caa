"""The app replicas: one uvicorn process each, configured by one shared file."""
from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

from ..ports import HOST
from ..render.addressing import loopback
from ..render.app import app_config
from .context import Context
from .proc import ProcessRecord, stop, wait_until
from ..files import write_atomic

PACKAGE_ROOT = Path(__file__).resolve().parents[2]   # the directory holding `stack/`


def name(index: int) -> str:
    return f"app-{index}"


def config_path(ctx: Context) -> Path:
    return ctx.state.service_dir("app", owned_by_service_user=False) / "config.json"


def write_config(ctx: Context, shards="topology") -> None:
    """The file every replica reads; it holds passwords, so only its owner may read it.
    `shards`: a shard routing other than the topology's (a phase of stack.resharding)."""
    config = app_config(ctx.topology, ctx.secrets, loopback(ctx.ports), shards=shards)
    write_atomic(config_path(ctx), json.dumps(config, indent=2), mode=0o600)


def _get(port: int, path: str, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def start(ctx: Context, index: int) -> ProcessRecord:
    """Spawn replica `index` (does not wait: replicas start in parallel, see wait_ready)."""
    env = {**os.environ, "SCALELAB_REPLICA": name(index), "SCALELAB_APP_CONFIG": str(config_path(ctx)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "uvicorn", "stack.app.service:create_app", "--factory",
            "--host", HOST, "--port", ctx.ports.app(index), "--http", "stack.app.connections:CountingHttpToolsProtocol", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning", "--backlog", "2048",
            "--timeout-graceful-shutdown", "5"]
    # The app is our own code: it runs as the caller, who can reach the virtualenv.
    return ctx.spawn_server(name(index), argv, env=env, as_service_user=False)


def wait_ready(ctx: Context, index: int, record: ProcessRecord) -> None:
    wait_until(lambda: _get(ctx.ports.app(index), "/health")["replica"] == name(index), name(index), 20,
               record, ctx.state.log(name(index)))


def stop_replica(record: ProcessRecord | None) -> None:
    # uvicorn finishes in-flight requests on SIGTERM (graceful shutdown, at most 5 s).
    stop(record, signal.SIGTERM, timeout=8)
