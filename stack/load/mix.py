"""What each request is: a weighted mix of request templates plus a key distribution.

A template's path (and string values in its JSON body) may contain "{key}",
replaced by a key drawn from the mix's Keys. The sequence of (template, key)
is fixed by the seed, so two runs with the same seed send the same requests.
"""
from __future__ import annotations

import itertools
import json as jsonlib
import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from yarl import URL

from .errors import LoadSpecError, number_in, one_of
from .keys import Keys

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
PLACEHOLDER = "{key}"
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Request:
    """One kind of request in a mix."""
    method: str = "GET"
    path: str = "/health"
    weight: float = 1.0
    json: Any = None          # body sent as JSON; string values may contain {key}
    name: str = ""            # label in results; default "METHOD path"

    @property
    def label(self) -> str:
        return self.name or f"{self.method} {self.path}"

    @property
    def keyed(self) -> bool:
        return PLACEHOLDER in self.path or PLACEHOLDER in jsonlib.dumps(self.json)

    def validate(self, where: str = "request") -> None:
        one_of(f"{where}.method", self.method, METHODS)
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise LoadSpecError(f"{where}.path", self.path, "a path starting with '/', e.g. '/users/{key}'")
        number_in(f"{where}.weight", self.weight, 0.0, 1e9, low_open=True)
        try:
            jsonlib.dumps(self.json)
        except (TypeError, ValueError):
            raise LoadSpecError(f"{where}.json", self.json, "a JSON-serialisable value") from None


def _fill(value, key: str):
    """`value` with every "{key}" in its strings replaced (dicts and lists walked)."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, key)
    if isinstance(value, dict):
        return {k: _fill(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, key) for v in value]
    return value


@dataclass(frozen=True)
class RequestMix:
    """Weighted request templates and how their {key} is drawn."""
    requests: tuple[Request, ...] = (Request(),)
    keys: Keys = field(default_factory=Keys)

    def __post_init__(self):
        if isinstance(self.requests, Request):
            object.__setattr__(self, "requests", (self.requests,))
        elif isinstance(self.requests, list):
            object.__setattr__(self, "requests", tuple(self.requests))
        if not isinstance(self.keys, Keys):
            object.__setattr__(self, "keys", Keys.of(self.keys))

    # -- ready-made mixes for the course ----------------------------------------
    @classmethod
    def single(cls, path: str = "/health", method: str = "GET", json: Any = None) -> "RequestMix":
        return cls((Request(method, path, 1.0, json),))

    @classmethod
    def users(cls, read_ratio: float = 0.9, keys: Keys | str = "uniform", n: int = 10_000,
              s: float = 1.1) -> "RequestMix":
        """GET /users/{id} with probability read_ratio, else PUT /users/{id} renaming the user."""
        number_in("read_ratio", read_ratio, 0.0, 1.0)
        if isinstance(keys, str):
            one_of("keys", keys, ("uniform", "zipf"))
            keys = Keys(keys, n, s)
        reads = Request("GET", "/users/{key}", read_ratio, name="GET /users/{id}")
        writes = Request("PUT", "/users/{key}", 1.0 - read_ratio, {"name": "load-{key}"},
                         name="PUT /users/{id}")
        return cls(tuple(r for r in (reads, writes) if r.weight > 0), keys)

    @classmethod
    def work(cls, short_ms: float = 5, long_ms: float = 200, long_ratio: float = 0.1,
             kind: str = "io") -> "RequestMix":
        """Short and long /work requests: the mix where least_conn beats round robin."""
        number_in("long_ratio", long_ratio, 0.0, 1.0)
        one_of("kind", kind, ("io", "cpu"))
        short = Request("GET", f"/work?ms={short_ms:g}&kind={kind}", 1.0 - long_ratio)
        long = Request("GET", f"/work?ms={long_ms:g}&kind={kind}", long_ratio)
        return cls(tuple(r for r in (short, long) if r.weight > 0))

    @classmethod
    def parse(cls, text: str, keys: Keys | str = "uniform", body: Any = None) -> "RequestMix":
        """A mix from "GET /users/{key}:90, PUT /users/{key}:10" (weights are relative).

        `body` is sent as JSON with every non-GET/HEAD entry.
        """
        entries = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            spec, _, weight = part.rpartition(":")
            if not spec:
                spec, weight = part, "1"
            method, _, path = spec.strip().partition(" ")
            try:
                w = float(weight)
            except ValueError:
                raise LoadSpecError("mix", part, "entries like 'GET /path:weight'") from None
            method = method.upper()
            entries.append(Request(method, path.strip(), w, None if method in ("GET", "HEAD") else body))
        if not entries:
            raise LoadSpecError("mix", text, "entries like 'GET /users/{key}:90, PUT /users/{key}:10'")
        mix = cls(tuple(entries), Keys.of(keys))
        mix.validate()
        return mix

    def validate(self) -> None:
        if not self.requests or not all(isinstance(r, Request) for r in self.requests):
            raise LoadSpecError("mix.requests", self.requests, "a non-empty tuple of Request")
        for i, request in enumerate(self.requests):
            request.validate(f"mix.requests[{i}]")
        labels = [r.label for r in self.requests]
        if len(set(labels)) != len(labels):
            raise LoadSpecError("mix.requests", labels, "distinct labels (set Request.name)")
        if any(r.keyed for r in self.requests):
            self.keys.validate()

    def shares(self) -> dict[str, float]:
        total = sum(r.weight for r in self.requests)
        return {r.label: r.weight / total for r in self.requests}


def render_request(method: str, url: URL, body: bytes | None) -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive is the HTTP/1.1 default)."""
    host = f"[{url.raw_host}]" if ":" in url.raw_host else url.raw_host   # IPv6 literal
    if not url.is_default_port():
        host = f"{host}:{url.port}"
    head = f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scalelab-load\r\nAccept: */*\r\n"
    if body is None:
        if method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        return (head + "\r\n").encode("latin-1")
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


class Prepared(NamedTuple):
    """A request ready to send: everything computed once, outside the hot path."""
    label: str
    method: str
    url: URL
    data: bytes | None
    headers: dict | None
    raw: bytes                # the whole HTTP/1.1 request, for the fast client


class MixPlan:
    """The seeded stream of prepared requests for one run against `base_url`."""

    BATCH = 1024
    CACHE_LIMIT = 200_000     # prepared requests kept; past that, build each one

    def __init__(self, mix: RequestMix, base_url: str, seed: int = 1):
        mix.validate()
        self._mix = mix
        self._base = base_url.rstrip("/")
        rng = random.Random(seed)
        self._pick = lambda count: rng.choices(range(len(mix.requests)), cum_weights=self._cum, k=count)
        self._cum = list(itertools.accumulate(r.weight for r in mix.requests))
        keyed = any(r.keyed for r in mix.requests)
        self._keys = mix.keys.sampler(rng) if keyed else (lambda count: [0] * count)
        self._cache: dict[tuple[int, int], Prepared] = {}
        self._batch: list[tuple[int, int]] = []

    def _prepare(self, index: int, key: int) -> Prepared:
        r = self._mix.requests[index]
        k = str(key)
        url = URL(self._base + r.path.replace(PLACEHOLDER, k))
        data = None if r.json is None else jsonlib.dumps(_fill(r.json, k)).encode()
        return Prepared(r.label, r.method, url, data, None if data is None else JSON_HEADERS,
                        render_request(r.method, url, data))

    def next(self) -> Prepared:
        if not self._batch:
            count = self.BATCH
            # Reversed so pop() hands them out in drawing order.
            self._batch = list(zip(self._pick(count), self._keys(count)))[::-1]
        item = self._batch.pop()
        prepared = self._cache.get(item)
        if prepared is None:
            prepared = self._prepare(*item)
            if len(self._cache) < self.CACHE_LIMIT:
                self._cache[item] = prepared
        return prepared
