"""nginx as the load balancer; strategy, weight and scale changes by graceful reload."""
from __future__ import annotations

import signal
import time
import urllib.request

import psutil

from ..errors import ServiceFailedError
from ..ports import HOST
from ..render.nginx import render_nginx_conf, render_upstream_conf
from .context import Context
from .proc import ProcessRecord, wait_until
from ..files import write_atomic


def _directory(ctx: Context):
    directory = ctx.dir("nginx")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "temp" / kind).mkdir(parents=True, exist_ok=True)
        ctx.run_as.own(directory / "temp", directory / "temp" / kind)
    return directory


def write_upstream(ctx: Context) -> None:
    directory = ctx.dir("nginx")
    write_atomic(directory / "upstream.conf", render_upstream_conf(ctx.topology, ctx.ports))


def healthy(ctx: Context) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{ctx.ports.nginx}/nginx-health", timeout=1) as resp:
        return resp.status == 200


def start(ctx: Context) -> ProcessRecord:
    directory = _directory(ctx)
    write_atomic(directory / "nginx.conf", render_nginx_conf(directory, ctx.ports.nginx))
    write_upstream(ctx)
    record = ctx.spawn_server("nginx", [ctx.bins.nginx, "-p", directory, "-c", directory / "nginx.conf"])
    wait_until(lambda: healthy(ctx), "nginx", 10, record, ctx.state.log("nginx"))
    return record


def _workers(master: psutil.Process) -> list[psutil.Process]:
    try:
        return master.children()
    except psutil.Error:
        return []


def _switched(master: psutil.Process, old: set[int]) -> bool:
    workers = _workers(master)
    if not any(p.pid not in old for p in workers):
        return False
    for proc in workers:
        if proc.pid in old:
            try:
                if "shutting down" not in " ".join(proc.cmdline()):
                    return False
            except psutil.Error:
                pass   # it exited meanwhile: fine
    return True


def reload(ctx: Context, record: ProcessRecord, drain_timeout: float | None = None) -> None:
    """Rewrite the upstream and reload gracefully.

    Returns when a new worker serves the new configuration. With
    `drain_timeout`, also waits (up to that long) for the old workers to
    finish their requests and exit, so a removed replica can then be stopped
    without cutting a request off.
    """
    master = record.process()
    if master is None:
        raise ServiceFailedError("nginx is not running: run up() to start it")
    old = {p.pid for p in _workers(master)}
    write_upstream(ctx)
    master.send_signal(signal.SIGHUP)
    # Done when a new worker runs AND no old worker still accepts connections with the old
    # upstream (an old worker retitles itself "shutting down" once it stops accepting).
    wait_until(lambda: _switched(master, old), "nginx reload", 5, record, ctx.state.log("nginx"), interval=0.002)
    if drain_timeout:
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and old & {p.pid for p in _workers(master)}:
            time.sleep(0.01)
