"""The cache: a Redis-protocol server (Valkey by default), password protected, no persistence."""
from __future__ import annotations

from ..clients import redis_client
from ..files import write_atomic
from ..ports import HOST
from ..render.redis import render_redis_conf
from .context import Context
from .proc import ProcessRecord, wait_until


def _config_text(ctx: Context, directory) -> str:
    # The password sits in a file only the service user can read, not on the command line.
    return render_redis_conf(ctx.topology, port=ctx.ports.redis, bind=HOST, directory=str(directory),
                             auth=f"requirepass {ctx.secrets['redis_password']}")


def write_config(ctx: Context) -> None:
    conf = ctx.dir("redis") / "redis.conf"
    write_atomic(conf, _config_text(ctx, conf.parent), mode=0o600)
    ctx.run_as.own(conf)


def start(ctx: Context) -> ProcessRecord:
    write_config(ctx)
    record = ctx.spawn_server("redis", [ctx.bins.valkey, ctx.dir("redis") / "redis.conf"])
    wait_until(lambda: redis_client(ctx).ping(), "redis", 10, record, ctx.state.log("redis"))
    return record
