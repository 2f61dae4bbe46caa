"""The desired stack, as one validated and immutable value.

Everything else is derived from a `Topology` (rendered config files) or
applies one (the reconciler). Defaults follow the article: 4 app replicas
behind least_conn with keepalive 32, a write pool of 20 and a read pool of 40
per replica (connect timeout 2 s, idle 30 s), and a cache TTL of 300 s.

Change one thing with `topology.with_changes(replicas=2)` (or the dotted
name, `**{"app.replicas": 2}`); every value is checked, and a bad one raises
`TopologyError` naming the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from .errors import TopologyError
from .shardmap import MAX_SHARDS, SCHEMES as SHARD_SCHEMES

STRATEGIES = ("round_robin", "least_conn", "ip_hash", "consistent_hash", "random_two")
POOL_MODES = ("session", "transaction", "statement")
SYNC_COMMIT = ("off", "local", "on", "remote_write", "remote_apply")
EVICTION_POLICIES = (
    "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
)
READ_TARGETS = ("replica", "primary")
NEXT_UPSTREAM = ("error", "timeout", "invalid_header", "http_500", "http_502",
                 "http_503", "http_504", "non_idempotent", "off")
MAX_REPLICAS = 16


def _int_in(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TopologyError(name, value, f"an integer from {low} to {high}")


def _number_in(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise TopologyError(name, value, f"a number from {low} to {high}")


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise TopologyError(name, value, "one of " + ", ".join(map(repr, allowed)))


@dataclass(frozen=True)
class AppSpec:
    """The app replicas and what each one may use."""
    replicas: int = 4
    concurrency: int = 4          # K: /work requests one replica serves at once
    cpu_quota: float | None = None  # cores per replica; None = no quota
    write_pool: int = 20          # connections to the primary, per replica
    read_pool: int = 40           # connections to the read replica, per replica
    pool_timeout_s: float = 2.0   # wait for a pooled connection before a 503
    pool_idle_s: float = 30.0     # close pooled connections idle this long
    read_from: str = "replica"    # where GET /users/{id} reads

    def validate(self) -> None:
        _int_in("app.replicas", self.replicas, 1, MAX_REPLICAS)
        _int_in("app.concurrency", self.concurrency, 1, 1024)
        if self.cpu_quota is not None:
            _number_in("app.cpu_quota", self.cpu_quota, 0.05, float(os.cpu_count() or 1))
        _int_in("app.write_pool", self.write_pool, 1, 500)
        _int_in("app.read_pool", self.read_pool, 1, 500)
        _number_in("app.pool_timeout_s", self.pool_timeout_s, 0.05, 60)
        _number_in("app.pool_idle_s", self.pool_idle_s, 1, 3600)
        _one_of("app.read_from", self.read_from, READ_TARGETS)


@dataclass(frozen=True)
class BalancerSpec:
    """nginx in front of the replicas."""
    strategy: str = "least_conn"
    weights: tuple[int, ...] | None = None   # one per replica; None = all 1
    keepalive: int = 32                      # idle upstream connections kept; 0 = off
    max_fails: int = 1                       # passive health check
    fail_timeout_s: int = 10
    next_upstream: tuple[str, ...] = ("error", "timeout")

    def validate(self, replicas: int) -> None:
        _one_of("balancer.strategy", self.strategy, STRATEGIES)
        if self.weights is not None:
            if len(self.weights) != replicas:
                raise TopologyError("balancer.weights", self.weights,
                                    f"one weight per replica ({replicas} values) or None")
            for i, weight in enumerate(self.weights):
                _int_in(f"balancer.weights[{i}]", weight, 1, 100)
        _int_in("balancer.keepalive", self.keepalive, 0, 1024)
        _int_in("balancer.max_fails", self.max_fails, 0, 100)
        _int_in("balancer.fail_timeout_s", self.fail_timeout_s, 1, 3600)
        if not self.next_upstream:
            raise TopologyError("balancer.next_upstream", self.next_upstream, "at least one condition")
        for cond in self.next_upstream:
            _one_of("balancer.next_upstream", cond, NEXT_UPSTREAM)
        if "off" in self.next_upstream and len(self.next_upstream) > 1:
            raise TopologyError("balancer.next_upstream", self.next_upstream, "'off' alone, or no 'off'")

    def weight_list(self, replicas: int) -> list[int]:
        return list(self.weights) if self.weights is not None else [1] * replicas


@dataclass(frozen=True)
class PostgresSpec:
    """PostgreSQL primary with one streaming replica, and optionally N shard servers for users."""
    replica_delay_ms: int = 0          # recovery_min_apply_delay on the replica
    synchronous_commit: str = "on"     # remote_write/remote_apply wait for the replica
    max_connections: int = 200
    shards: int = 0                    # 0: users live on the primary; N: split over N more primaries
    shard_scheme: str = "consistent"   # modulo / consistent / jump (by user id), directory (by region)

    def validate(self) -> None:
        _int_in("postgres.replica_delay_ms", self.replica_delay_ms, 0, 600_000)
        _one_of("postgres.synchronous_commit", self.synchronous_commit, SYNC_COMMIT)
        _int_in("postgres.max_connections", self.max_connections, 10, 2000)
        _int_in("postgres.shards", self.shards, 0, MAX_SHARDS)
        _one_of("postgres.shard_scheme", self.shard_scheme, SHARD_SCHEMES)

    def shard_map(self):
        """The users' shard map (stack.shardmap.ShardMap), or None when sharding is off."""
        from .shardmap import ShardMap
        return ShardMap(self.shard_scheme, self.shards) if self.shards else None


@dataclass(frozen=True)
class PgBouncerSpec:
    """PgBouncer between the app's write pool and the primary."""
    enabled: bool = True
    mode: str = "transaction"
    pool_size: int = 20               # server connections per database/user pair
    max_client_conn: int = 1000

    def validate(self) -> None:
        if not isinstance(self.enabled, bool):
            raise TopologyError("pgbouncer.enabled", self.enabled, "True or False")
        _one_of("pgbouncer.mode", self.mode, POOL_MODES)
        _int_in("pgbouncer.pool_size", self.pool_size, 1, 1000)
        _int_in("pgbouncer.max_client_conn", self.max_client_conn, 10, 100_000)


@dataclass(frozen=True)
class CacheSpec:
    """Redis (Valkey) as the cache-aside layer."""
    ttl_s: int = 300                  # 0 turns caching off
    maxmemory_mb: int = 64
    policy: str = "allkeys-lru"

    def validate(self) -> None:
        _int_in("cache.ttl_s", self.ttl_s, 0, 86_400)
        _int_in("cache.maxmemory_mb", self.maxmemory_mb, 1, 4096)
        _one_of("cache.policy", self.policy, EVICTION_POLICIES)


SECTIONS = {"app": AppSpec, "balancer": BalancerSpec, "postgres": PostgresSpec,
            "pgbouncer": PgBouncerSpec, "cache": CacheSpec}


@dataclass(frozen=True)
class Topology:
    app: AppSpec = field(default_factory=AppSpec)
    balancer: BalancerSpec = field(default_factory=BalancerSpec)
    postgres: PostgresSpec = field(default_factory=PostgresSpec)
    pgbouncer: PgBouncerSpec = field(default_factory=PgBouncerSpec)
    cache: CacheSpec = field(default_factory=CacheSpec)
    # Ports are base_port + a fixed offset per service (see stack.local.ports).
    base_port: int = 18080

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TopologyError(name, getattr(self, name), f"a {cls.__name__}")
        self.app.validate()
        self.balancer.validate(self.app.replicas)
        self.postgres.validate()
        self.pgbouncer.validate()
        self.cache.validate()
        _int_in("base_port", self.base_port, 1024, 65535 - 64)

    @classmethod
    def from_state(cls, saved: dict) -> "Topology | None":
        """The topology a backend's state.json recorded as applied, if any."""
        return cls.from_dict(saved["topology"]) if saved.get("topology") else None

    @classmethod
    def from_env(cls) -> "Topology":
        """The defaults, on the port block named by $SCALELAB_BASE_PORT if set (tests use their own)."""
        raw = os.environ.get("SCALELAB_BASE_PORT")
        if raw is None:
            return cls()
        try:
            return cls(base_port=int(raw))
        except ValueError:
            raise TopologyError("SCALELAB_BASE_PORT", raw, "an integer port, e.g. 18080") from None

    # -- changing one thing -------------------------------------------------
    def with_changes(self, **changes) -> "Topology":
        """A copy with some fields changed, by leaf name or dotted name.

        Changing the replica count keeps the weights you set for the replicas
        that remain, and gives new replicas weight 1.
        """
        per_section: dict[str, dict] = {name: {} for name in SECTIONS}
        top: dict = {}
        for key, value in changes.items():
            section, leaf = _resolve(key, value)
            if isinstance(value, list):
                value = tuple(value)
            (per_section[section] if section else top)[leaf] = value
        app_changes = per_section["app"]
        if "replicas" in app_changes and "weights" not in per_section["balancer"] \
                and self.balancer.weights is not None:
            n = app_changes["replicas"]
            if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
                kept = list(self.balancer.weights[:n])
                per_section["balancer"]["weights"] = tuple(kept + [1] * (n - len(kept)))
        parts = {name: dataclasses.replace(getattr(self, name), **vals) if vals else getattr(self, name)
                 for name, vals in per_section.items()}
        return Topology(**parts, base_port=top.get("base_port", self.base_port))

    # -- plain data, for the state file and JSON ----------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Topology":
        data = dict(data)
        parts = {}
        for name, section_cls in SECTIONS.items():
            raw = dict(data.pop(name, {}) or {})
            known = {f.name for f in fields(section_cls)}
            unknown = set(raw) - known
            if unknown:
                raise TopologyError(f"{name}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]],
                                    f"a field of {name}: {', '.join(sorted(known))}")
            parts[name] = section_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        unknown = set(data) - {"base_port"}
        if unknown:
            key = sorted(unknown)[0]
            raise TopologyError(key, data[key], "a section (" + ", ".join(SECTIONS) + ") or base_port")
        return cls(**parts, **data)


def _leaf_index() -> dict[str, str]:
    index = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            index[f.name] = section
    return index


_LEAVES = _leaf_index()


def _resolve(key: str, value=None) -> tuple[str | None, str]:
    """'replicas' -> ('app', 'replicas'); 'cache.ttl_s' -> ('cache', 'ttl_s')."""
    if key == "base_port":
        return None, key
    if "." in key:
        section, leaf = key.split(".", 1)
        if section in SECTIONS and leaf in {f.name for f in fields(SECTIONS[section])}:
            return section, leaf
    elif key in _LEAVES:
        return _LEAVES[key], key
    allowed = sorted({f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)} | {"base_port"})
    raise TopologyError(key, value, "a known field: " + ", ".join(allowed))
