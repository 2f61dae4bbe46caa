"""PgBouncer in front of the primary; configuration changes by reload (SIGHUP)."""
from __future__ import annotations

import signal

from ..render.pgbouncer import render_pgbouncer_ini, render_userlist
from .context import Context
from .proc import ProcessRecord, port_open, wait_until
from ..files import write_atomic


def _write_config(ctx: Context) -> None:
    directory = ctx.dir("pgbouncer")
    userlist = directory / "userlist.txt"
    write_atomic(userlist, render_userlist({"postgres": ctx.secrets["postgres_password"],
                                            "app": ctx.secrets["app_password"]}), mode=0o600)
    ini = directory / "pgbouncer.ini"
    write_atomic(ini, render_pgbouncer_ini(ctx.topology, ctx.ports, directory), mode=0o600)
    ctx.run_as.own(userlist, ini)


def start(ctx: Context) -> ProcessRecord:
    _write_config(ctx)
    record = ctx.spawn_server("pgbouncer", [ctx.bins.pgbouncer, ctx.dir("pgbouncer") / "pgbouncer.ini"])
    wait_until(lambda: port_open(ctx.ports.pgbouncer), "pgbouncer", 10, record, ctx.state.log("pgbouncer"))
    return record


def reload(ctx: Context, record: ProcessRecord) -> None:
    """Rewrite the config and SIGHUP; the caller waits until SHOW CONFIG reports it."""
    _write_config(ctx)
    proc = record.process()
    if proc is not None:
        proc.send_signal(signal.SIGHUP)
