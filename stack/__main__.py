"""python -m stack up | down | status | scale N | set FIELD=VALUE ... | logs SERVICE | fault kill|pause|resume SERVICE | load ..."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import get_stack
from .errors import StackError
from .topology import Topology


def _parse_value(text: str):
    """CLI values as JSON where they parse (numbers, true, [1,2]), else as strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _print_status(status: dict) -> None:
    print(f"backend {status['backend']}   state {status['state_dir']}   entry point {status['url']}")
    for service, info in sorted(status["services"].items()):
        where = f"   node {info['node']}" if info.get("node") else ""      # a swarm's task
        print(f"  {service:18} {info['state']:8} {info['address'] or '':22} pid {info['pid'] or '-'}{where}")
        if info.get("note"):
            print(f"  {'':18} {info['note']}")
        if info["state"] == "exited" and "exit" in info:
            print(f"  {'':18} {info['exit']}; `up` restarts it. Last log lines:")
            for line in info.get("last_log_lines", []):
                print(f"  {'':20} {line}")
    if not status["services"]:
        print("  (nothing has run yet: python -m stack up)")
    if status.get("listening"):
        print(f"note: {status['listening']}")


def _split_psql_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`python -m stack [--state-dir D] psql [SERVER] -- ARGS`: ARGS are psql's own, not ours."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):      # our options before the command
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help") else 2
    if i < len(argv) and argv[i] == "psql" and "--" in argv[i:]:
        cut = argv.index("--", i)
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description="The ScaleLab live stack.")
    parser.add_argument("--state-dir", help="state directory (default: $SCALELAB_STATE or a per-user temp dir)")
    parser.add_argument("--backend", choices=("local", "docker", "swarm"),
                        help="processes on this machine (default: $SCALELAB_BACKEND or local), a Docker compose "
                             "project, or a stack on Docker Swarm")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the stack (or re-attach and make it match)")
    up.add_argument("--base-port", type=int, help="first port of the block the stack uses (default 18080)")
    up.add_argument("--replicas", type=int, help="number of app replicas")
    down = sub.add_parser("down", help="stop every service")
    down.add_argument("--purge", action="store_true", help="also delete data, logs and secrets")
    status = sub.add_parser("status", help="every service's state, address and pid")
    status.add_argument("--json", action="store_true")
    scale = sub.add_parser("scale", help="change the number of app replicas")
    scale.add_argument("replicas", type=int)
    setter = sub.add_parser("set", help="change topology fields, e.g. set strategy=round_robin cache.ttl_s=30")
    setter.add_argument("changes", nargs="+", metavar="FIELD=VALUE")
    logs = sub.add_parser("logs", help="the last lines of one service's log")
    logs.add_argument("service")
    logs.add_argument("-n", "--lines", type=int, default=50)
    fault = sub.add_parser("fault", help="inject a fault: kill (SIGKILL), pause (SIGSTOP) or resume a service")
    fault.add_argument("action", choices=("kill", "pause", "resume"))
    fault.add_argument("service")
    url = sub.add_parser("url", help="the URL psql, redis-cli or curl takes for a service, e.g. "
                                     "psql \"$(python -m stack url primary)\"")
    url.add_argument("service", nargs="?", help="primary, standby, pgbouncer, shard-N, redis, nginx, app-N "
                                                "(none: every service with the command that opens it)")
    url.add_argument("--user", choices=("postgres", "app"), default="postgres", help="PostgreSQL role")
    url.add_argument("--db", default="scalelab", help="database (PgBouncer's console: pgbouncer)")
    psql = sub.add_parser("psql", help="psql connected to a PostgreSQL server of the stack; "
                                       "arguments after -- go to psql (python -m stack psql -- -c 'SELECT 1')",
                          epilog="psql's own options go after --, e.g. python -m stack psql standby -- -c 'SELECT 1'")
    psql.add_argument("server", nargs="?", default="primary", help="primary (default), standby, pgbouncer, shard-N")
    psql.add_argument("--user", choices=("postgres", "app"), default="postgres")
    psql.add_argument("--db", default="scalelab")
    try:
        from .load.cli import register as register_load
        register_load(sub)
    except ImportError:
        pass
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, passed_on = _split_psql_args(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        tip = (" (psql's own options go after --, e.g. python -m stack psql standby -- -c 'SELECT 1')"
               if args.command == "psql" else "")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{tip}")
    stack = get_stack(args.state_dir, args.backend)
    say = lambda message: print(message, flush=True)  # noqa: E731
    try:
        if args.command == "up":
            topology = stack.applied() or Topology.from_env()
            changes = {k: v for k, v in (("base_port", args.base_port), ("replicas", args.replicas)) if v is not None}
            done = stack.up(topology.with_changes(**changes), progress=say)
            print("already up to date" if not done else "", end="")
            _print_status(stack.status())
        elif args.command == "down":
            done = stack.down(purge=args.purge, progress=say)
            print("nothing was running" if not done else "stopped")
        elif args.command == "status":
            result = stack.status()
            print(json.dumps(result, indent=2)) if args.json else _print_status(result)
        elif args.command == "scale":
            stack.apply(progress=say, replicas=args.replicas)
        elif args.command == "set":
            changes = {}
            for item in args.changes:
                if "=" not in item:
                    parser.error(f"{item!r} is not FIELD=VALUE")
                key, value = item.split("=", 1)
                changes[key] = _parse_value(value)
            stack.apply(progress=say, **changes)
        elif args.command == "logs":
            print(stack.logs(args.service, args.lines))
        elif args.command == "fault":
            print(getattr(stack, args.action)(args.service))
        elif args.command == "url":
            from .standard_clients import print_urls
            print_urls(stack, args.service, user=args.user, dbname=args.db)
        elif args.command == "psql":
            from .standard_clients import exec_psql
            return exec_psql(stack, args.server, passed_on, user=args.user, dbname=args.db)
        else:
            return args.handler(args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:                 # `python -m stack url | head -3`: the reader left early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (Python's documented way)
        sys.exit(1)
