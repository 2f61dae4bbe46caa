"""The cache: a Redis-protocol server (Valkey by default), password protected, no persistence."""
from __future__ import annotations

import redis

from ..ports import HOST
from .context import Context
from .proc import ProcessRecord, wait_until
from ..files import write_atomic


def url(ctx: Context) -> str:
    return f"redis://:{ctx.secrets['redis_password']}@{HOST}:{ctx.ports.redis}/0"


def client(ctx: Context) -> redis.Redis:
    return redis.Redis.from_url(url(ctx), socket_timeout=2, decode_responses=True)


def _config_text(ctx: Context, directory) -> str:
    cache = ctx.topology.cache
    return (f"port {ctx.ports.redis}\nbind {HOST}\nprotected-mode yes\n"
            f"requirepass {ctx.secrets['redis_password']}\n"
            f"save \"\"\nappendonly no\ndaemonize no\ndir {directory}\n"
            f"maxmemory {cache.maxmemory_mb}mb\nmaxmemory-policy {cache.policy}\n")


def start(ctx: Context) -> ProcessRecord:
    directory = ctx.dir("redis")
    conf = directory / "redis.conf"
    # The password sits in a file only the service user can read, not on the command line.
    write_atomic(conf, _config_text(ctx, directory), mode=0o600)
    ctx.run_as.own(conf)
    record = ctx.spawn_server("redis", [ctx.bins.valkey, conf])
    wait_until(lambda: client(ctx).ping(), "redis", 10, record, ctx.state.log("redis"))
    return record


def apply(ctx: Context) -> None:
    """maxmemory and the eviction policy change live; the file keeps them for the next start."""
    cache = ctx.topology.cache
    conn = client(ctx)
    conn.config_set("maxmemory", f"{cache.maxmemory_mb}mb")
    conn.config_set("maxmemory-policy", cache.policy)
    conf = ctx.dir("redis") / "redis.conf"
    write_atomic(conf, _config_text(ctx, conf.parent), mode=0o600)
    ctx.run_as.own(conf)
