"""LoadSpec: one load run, as a validated value."""
from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import LoadSpecError, int_in, number_in, one_of
from yarl import URL

from .mix import RequestMix
from .schedule import ARRIVALS

MODES = ("open", "closed")
CLIENTS = ("auto", "fast", "aiohttp")
MAX_RATE = 100_000
MAX_CONNECTIONS = 10_000
# Open loop: enough connections for the offered rate at this latency (Little's law)
# before requests queue for a connection; aiohttp only opens the ones it needs.
AUTO_POOL_LATENCY_S = 0.1
AUTO_POOL_MIN, AUTO_POOL_MAX = 32, 1024


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how fast and for how long.

    mode="open": `rate` requests per second arriving on a schedule, whatever the
    server does; latency counts from each request's intended send time.
    `arrivals` is "poisson" (random, independent gaps, like real clients; the
    default) or "uniform" (evenly spaced, like wrk2 and k6). `connections`
    bounds the pool (None: sized for the rate).
    mode="closed": `connections` clients, each sending its next request when the
    previous one answers (what wrk and most tools do).
    """
    url: str
    mode: str = "open"
    rate: float | None = None
    connections: int | None = None
    duration_s: float = 10.0
    mix: RequestMix | None = None      # None: GET `path`
    path: str = "/health"
    timeout_s: float = 5.0             # per request; the run ends at most this long after duration_s
    interval_s: float = 0.5            # snapshot period
    # ip_hash hashes only the first three octets of an IPv4 address: spread clients over
    # different /24 networks, e.g. ("127.0.1.1", "127.0.2.1", "127.0.3.1").
    source_addresses: tuple[str, ...] = ()
    arrivals: str = "poisson"          # open loop: "poisson" or "uniform" (see stack.load.schedule)
    seed: int = 1                      # the arrivals and the keys repeat for the same seed
    max_send_lag_ms: float = 5.0       # open loop: p99 send lag above this (or above half the mean gap
                                       # between sends, if larger) = generator bottleneck
    cpu_limit: float = 0.9             # generator CPU (cores) above this = generator bottleneck
    client: str = "auto"               # "fast" (lean, http only), "aiohttp", or "auto": fast for http

    def __post_init__(self):
        if isinstance(self.source_addresses, (list, str)):
            addresses = [self.source_addresses] if isinstance(self.source_addresses, str) else self.source_addresses
            object.__setattr__(self, "source_addresses", tuple(addresses))
        self.validate()

    def validate(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise LoadSpecError("url", self.url, "an http:// or https:// URL, e.g. 'http://127.0.0.1:18080'")
        if parts.path not in ("", "/") or parts.query:
            raise LoadSpecError("url", self.url, "a base URL without path or query (put those in path or mix)")
        one_of("mode", self.mode, MODES)
        one_of("client", self.client, CLIENTS)
        one_of("arrivals", self.arrivals, ARRIVALS)
        if self.client == "fast" and parts.scheme != "http":
            raise LoadSpecError("client", self.client, "'aiohttp' or 'auto' for an https:// URL")
        if self.mode == "open":
            if self.rate is None:
                raise LoadSpecError("rate", self.rate, "a rate in requests per second for mode='open'")
            number_in("rate", self.rate, 0.0, MAX_RATE, low_open=True)
        elif self.rate is not None:
            raise LoadSpecError("rate", self.rate, "None for mode='closed' (its rate is what the server answers)")
        if self.connections is not None or self.mode == "closed":
            if self.connections is None:
                raise LoadSpecError("connections", None, "a number of connections for mode='closed'")
            int_in("connections", self.connections, 1, MAX_CONNECTIONS)
        number_in("duration_s", self.duration_s, 0.0, 24 * 3600, low_open=True)
        number_in("timeout_s", self.timeout_s, 0.0, 3600, low_open=True)
        number_in("interval_s", self.interval_s, 0.05, 3600)
        number_in("max_send_lag_ms", self.max_send_lag_ms, 0.0, 60_000, low_open=True)
        number_in("cpu_limit", self.cpu_limit, 0.0, 64, low_open=True)
        int_in("seed", self.seed, -2**63, 2**63 - 1)
        if self.mix is not None:
            if not isinstance(self.mix, RequestMix):
                raise LoadSpecError("mix", self.mix, "a RequestMix, e.g. RequestMix.users(read_ratio=0.9)")
            self.mix.validate()
        elif not isinstance(self.path, str) or not self.path.startswith("/"):
            raise LoadSpecError("path", self.path, "a path starting with '/', e.g. '/health'")
        for i, address in enumerate(self.source_addresses):
            try:
                ipaddress.ip_address(address)
            except (ValueError, TypeError):
                raise LoadSpecError(f"source_addresses[{i}]", address, "an IP address, e.g. '127.0.1.1'") from None
        if len(set(self.source_addresses)) != len(self.source_addresses):
            raise LoadSpecError("source_addresses", self.source_addresses, "distinct addresses")
        if self.connections is not None and self.source_addresses and self.connections < len(self.source_addresses):
            raise LoadSpecError("connections", self.connections,
                                f"at least one per source address ({len(self.source_addresses)})")

    @property
    def client_kind(self) -> str:
        """The client actually used: "fast" or "aiohttp"."""
        if self.client == "auto":
            return "fast" if self.url.startswith("http://") else "aiohttp"
        return self.client

    @property
    def parsed_url(self) -> URL:
        return URL(self.url)

    @property
    def request_mix(self) -> RequestMix:
        return self.mix if self.mix is not None else RequestMix.single(self.path)

    @property
    def pool_size(self) -> int:
        """The connection limit used: `connections`, or for open loop one sized for `rate`."""
        if self.connections is not None:
            return self.connections
        wanted = math.ceil(self.rate * AUTO_POOL_LATENCY_S)
        return max(AUTO_POOL_MIN, min(AUTO_POOL_MAX, wanted), len(self.source_addresses))

    def with_changes(self, **changes) -> "LoadSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        mix = self.request_mix
        return {"url": self.url, "mode": self.mode, "rate": self.rate, "connections": self.pool_size,
                "duration_s": self.duration_s, "arrivals": self.arrivals, "timeout_s": self.timeout_s, "interval_s": self.interval_s,
                "client": self.client_kind,
                "source_addresses": list(self.source_addresses), "seed": self.seed,
                "mix": {"requests": [{"method": r.method, "path": r.path, "weight": r.weight,
                                      "label": r.label} for r in mix.requests],
                        "keys": dataclasses.asdict(mix.keys)}}
