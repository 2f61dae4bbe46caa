"""New PostgreSQL data directories are copies of a template, not the work of initdb each time.

initdb and seeding cost 1.5-2 s here; a copy of a cleanly shut down cluster is made ahead of time
and moved into place in a millisecond (stack/local/cache.take_copy). A template is made once per machine for each (PostgreSQL version, schema) in the per-user cache
(stack/local/cache.py), without ever listening on a port: initdb, then single-user mode for the
roles, the database and the schema. Its passwords are no one's: every copy gets its state
directory's own (single-user mode again, before the server first starts), so no server ever
accepts a password other than its stack's.

A copy of a cleanly shut down cluster is a valid base backup (a file-system-level backup taken
with the server stopped), which is why a fresh standby can be a copy of the same template as its
fresh primary: it starts from the template's checkpoint and streams everything after it,
including the password change, from the primary.
"""
from __future__ import annotations

import functools
import secrets as secrets_mod
import subprocess
from pathlib import Path

from psycopg import sql

from ..errors import ServiceFailedError
from ..render import postgres as render
from ..render.pgbouncer import DATABASE
from ..files import write_atomic
from . import cache
from .context import Context

FORMAT = 1   # bump when what a template holds changes in a way its inputs below do not show


def run_tool(ctx: Context, what: str, argv: list, stdin: str | None = None, redact: tuple = (),
             env: dict | None = None) -> str:
    """A one-shot PostgreSQL tool (initdb, postgres --single, pg_basebackup) as the service user;
    fail with its output (secrets blanked)."""
    result = subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, text=True, env=env,
                            **ctx.run_as.popen_kwargs())
    output = result.stdout + result.stderr
    # Single-user mode reports a failed statement as ERROR and carries on with exit status 0.
    if result.returncode != 0 or "ERROR:" in output or "FATAL:" in output:
        for secret in redact:
            output = output.replace(secret, "<secret>")
        raise ServiceFailedError(f"{what}: {Path(str(argv[0])).name} failed (exit {result.returncode}):\n{output}")
    return output


# The control file of a copy remembers the settings its last server ran with, and a standby
# refuses to start unless its own max_connections, max_wal_senders, ... are at least those: so
# the stand-alone backends run with the lowest values any topology allows.
_SINGLE_USER_SETTINGS = {"unix_socket_directories": "", "listen_addresses": "", "max_connections": 10,
                         "superuser_reserved_connections": 0, "max_wal_senders": 0,
                         "max_prepared_transactions": 0, "max_worker_processes": 0}


def _single_user(ctx: Context, data: Path, dbname: str, statements: list[str], redact: tuple = ()) -> None:
    """Statements run by a stand-alone backend: no port, no socket, no password asked."""
    # -j: a statement ends at a semicolon followed by a blank line, so statements may span lines.
    script = "".join(s.strip().rstrip(";") + ";\n\n" for s in statements)
    settings = [arg for name, value in _SINGLE_USER_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
    run_tool(ctx, f"postgres --single on {data.parent.name}",
             [ctx.bins.pg("postgres"), "--single", "-j", "-D", data, *settings, dbname],
             stdin=script, redact=redact)


def _statements(schema: str) -> list[str]:
    return [s for s in schema.split(";\n") if s.strip()]


@functools.lru_cache(maxsize=None)
def _version(postgres: Path) -> str:
    """Asked once per binary: every new server (primary, standby, each shard) needs its template's key."""
    return subprocess.run([str(postgres), "--version"], capture_output=True, text=True).stdout.strip()


def _key(ctx: Context, schema: str, initdb_args: tuple) -> str:
    postgres = ctx.bins.pg("postgres")
    return cache.key_of(FORMAT, _version(postgres), postgres.stat().st_size, schema, initdb_args,
                        render.render_hba(), ctx.run_as.uid)


def template(ctx: Context, name: str, schema: str, initdb_args: tuple = ()) -> Path:
    """The data directory of template `name` (made the first time; then shared by every stack)."""
    def build(staging: Path) -> None:
        ctx.run_as.own(staging)
        data = staging / "data"
        pwfile = staging / "pwfile"
        # initdb insists on a superuser password with SCRAM; this one is thrown away.
        write_atomic(pwfile, secrets_mod.token_urlsafe(18) + "\n", mode=0o600)
        ctx.run_as.own(pwfile)
        try:
            run_tool(ctx, f"template {name}", [ctx.bins.pg("initdb"), "-N", "-D", data, "-A", "scram-sha-256",
                                               "-U", "postgres", "--pwfile", pwfile, "-E", "UTF8", "--locale=C",
                                               *initdb_args])
        finally:
            pwfile.unlink(missing_ok=True)
        write_atomic(data / "pg_hba.conf", render.render_hba(), mode=0o600)
        ctx.run_as.own(data / "pg_hba.conf")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude_if_exists = 'scalelab.conf'\n")
        _single_user(ctx, data, "postgres", ["CREATE ROLE app LOGIN",
                                             f"CREATE DATABASE {DATABASE} OWNER app"])
        _single_user(ctx, data, DATABASE, _statements(schema))

    return cache.entry(ctx.run_as, f"pg-{name}", _key(ctx, schema, initdb_args), build) / "data"


def set_passwords(ctx: Context, data: Path) -> None:
    """This stack's passwords, before the server first listens."""
    passwords = {"postgres": ctx.secrets["postgres_password"], "app": ctx.secrets["app_password"]}
    _single_user(ctx, data, "postgres",
                 [sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(pw)).as_string()
                  for role, pw in passwords.items()],
                 redact=tuple(passwords.values()))
