"""`python -m stack load ...`: run a load from the command line.

The lead wires it in with `register(subparsers)`; `python -m stack.load ...`
runs it on its own.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import LoadSpecError
from .keys import Keys
from .mix import RequestMix
from .result import IntervalSnapshot, LoadResult
from .schedule import ARRIVALS
from .spec import CLIENTS, MODES, LoadSpec

DESCRIPTION = ("Send HTTP load (open or closed loop) and report throughput, latency percentiles, "
               "errors and per-replica counts.")
MIX_HELP = ("'users' (90%% GET / 10%% PUT /users/{id}), 'users:0.8' (read ratio), 'work' "
            "(short and long /work), or entries 'GET /users/{key}:90, PUT /users/{key}:10'")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:18080", help="base URL (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="open",
                   help="open: fixed arrival rate, latency from intended send time; "
                        "closed: C connections, next request on answer (default: %(default)s)")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson",
                   help="open loop: poisson (random gaps, like real clients) or uniform "
                        "(evenly spaced, like wrk2/k6) (default: %(default)s)")
    p.add_argument("--connections", "-c", type=int,
                   help="closed loop: concurrent connections; open loop: pool limit (default: sized for --rate)")
    p.add_argument("--duration", "-d", type=float, default=10.0, help="seconds of sending (default: %(default)s)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--path", default="/health", help="one path to GET (default: %(default)s)")
    what.add_argument("--mix", help=MIX_HELP)
    p.add_argument("--body", help="JSON body for non-GET entries of --mix; strings may contain {key}")
    p.add_argument("--keys", choices=("uniform", "zipf"), default="uniform", help="how {key} is drawn")
    p.add_argument("--key-count", type=int, default=10_000, help="keys are 1..N (default: %(default)s)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--source", default="", help="client source addresses, e.g. 127.0.1.1,127.0.2.1 (ip_hash uses the first three octets)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds per live line (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s (default: %(default)s)")
    p.add_argument("--client", choices=CLIENTS, default="auto")
    p.add_argument("--json", action="store_true", help="print the full result as JSON (no live lines)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `load` subcommand; its handler is `args.handler(args)` -> exit code."""
    p = subparsers.add_parser("load", help="send HTTP load and report throughput and latency",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(handler=handle)
    return p


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    keys = Keys(args.keys, args.key_count, args.zipf_s)
    mix = None
    if args.mix:
        name, _, arg = args.mix.strip().partition(":")
        if name == "users":
            try:
                ratio = float(arg) if arg else 0.9
            except ValueError:
                raise LoadSpecError("mix", args.mix, "'users' or 'users:<read ratio from 0 to 1>'") from None
            mix = RequestMix.users(ratio, keys)
        elif name == "work":
            mix = RequestMix.work()
        else:
            body = None
            if args.body:
                try:
                    body = json.loads(args.body)
                except json.JSONDecodeError as exc:
                    raise LoadSpecError("body", args.body, f"JSON ({exc})") from None
            mix = RequestMix.parse(args.mix, keys, body)
    elif "{key}" in args.path:
        mix = RequestMix((RequestMix.single(args.path).requests[0],), keys)
    sources = tuple(a.strip() for a in args.source.split(",") if a.strip())
    return LoadSpec(url=args.url, mode=args.mode, rate=args.rate, connections=args.connections,
                    duration_s=args.duration, mix=mix, path=args.path, timeout_s=args.timeout,
                    interval_s=args.interval, source_addresses=sources, seed=args.seed, client=args.client,
                    arrivals=args.arrivals)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def interval_line(s: IntervalSnapshot) -> str:
    errors = sum(s.errors.values())
    replicas = " ".join(f"{k}:{v}" for k, v in s.replicas.items())
    lag = f" lag99 {_ms(s.send_lag_p99_ms)}" if s.send_lag_p99_ms is not None else ""
    return (f"t={s.t_s:6.2f}s  {s.throughput_rps:8.1f} rps  p50 {_ms(s.p50_ms)}  p99 {_ms(s.p99_ms)} ms"
            f"{lag}  err {errors}  inflight {s.in_flight}  cpu {s.cpu:.2f}  {replicas}")


def summary_text(r: LoadResult) -> str:
    lat = r.latency.summary()
    errors = ", ".join(f"{n} {k}" for k, n in r.errors.items() if n) or "none"
    lines = [f"{r.mode} loop -> {r.url}: sent {r.sent}, responses {r.responses} (ok {r.ok}), errors: {errors}",
             f"throughput {r.throughput_rps:.1f} req/s" + (f" (offered {r.offered_rps:g})" if r.offered_rps else "")
             + f" over {r.duration_s:.2f} s; generator cpu {r.cpu:.2f}",
             "latency ms: " + "  ".join(f"{k[:-3]} {_ms(lat[k])}" for k in
                                        ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "p99_9_ms", "max_ms"))]
    if r.send_lag is not None:
        lines.append(f"send lag ms: p50 {_ms(r.send_lag.percentile_ms(50))}  p99 {_ms(r.send_lag.percentile_ms(99))}"
                     f"  max {_ms(r.send_lag.max_ms())}")
    for name, g in sorted(r.replicas.items()):
        s = g.latency.summary()
        lines.append(f"  {name:<12} {g.count:>8} responses  p50 {_ms(s['p50_ms'])}  p99 {_ms(s['p99_ms'])} ms")
    if len(r.requests) > 1:
        for name, g in r.requests.items():
            s = g.latency.summary()
            lines.append(f"  {name:<20} {g.count:>8} responses  p50 {_ms(s['p50_ms'])}  p99 {_ms(s['p99_ms'])} ms"
                         f"  errors {sum(g.errors.values())}")
    lines += [f"warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    from .api import run_load
    try:
        spec = spec_from_args(args)
    except LoadSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    live = None if args.json else (lambda s: print(interval_line(s), file=sys.stderr, flush=True))
    result = run_load(spec, on_interval=live)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
    else:
        print(summary_text(result))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.load", description=DESCRIPTION)
    add_arguments(parser)
    return handle(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
