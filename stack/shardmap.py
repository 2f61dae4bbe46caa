"""Which shard holds a user: the shard maps the stack, the app and the lessons share (pure, no I/O).

    m = ShardMap("consistent", 4)
    m.home(42)                     # 1..4: the shard server (postgres-shard-N) that holds user 42
    m.home(42, region="eu")        # the directory scheme routes by region instead of id
    moved_fraction(ShardMap("modulo", 4), ShardMap("modulo", 5), range(1, 10_001))

Schemes (the shard key is the user id, except for "directory"):
- "modulo":     key_hash(id) mod N. Simple and uniform; changing N moves about N/(N+1) of the keys.
- "consistent": a hash ring with VNODES points per shard; a key belongs to the first point at or
                after its hash (clockwise, wrapping). Adding a shard moves about 1/(N+1) of the keys.
- "jump":       Lamping and Veach's jump consistent hash: no ring to store, moves exactly the
                keys the new shard takes (1/(N+1) expected), but shards can only be added at the end.
- "directory":  a lookup table from region to shard (region i -> shard i mod N + 1): the shard key
                is the region, so a region's users stay together, and a hot region is a hot shard.

Every scheme hashes with `key_hash` (the first 8 bytes of MD5, big-endian): the same number in
every process and on every machine, unlike Python's salted hash().
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from functools import lru_cache

SCHEMES = ("modulo", "consistent", "jump", "directory")
REGIONS = ("eu", "us", "apac", "latam")     # the seeded users' regions (stack.local.postgres)
VNODES = 64                                 # ring points per shard for "consistent"
MAX_SHARDS = 8


def key_hash(key) -> int:
    """A stable 64-bit hash of str(key)."""
    return int.from_bytes(hashlib.md5(str(key).encode()).digest()[:8], "big")


def modulo_shard(user_id: int, count: int) -> int:
    return key_hash(user_id) % count + 1


def vnode_label(shard: int, vnode: int) -> str:
    """The label whose hash places virtual node `vnode` of `shard` on the ring."""
    return f"shard-{shard}#{vnode}"


@lru_cache(maxsize=64)
def ring_points(count: int, vnodes: int = VNODES) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(sorted point hashes, the shard at each point) for shards 1..count."""
    points = sorted((key_hash(vnode_label(s, v)), s) for s in range(1, count + 1) for v in range(vnodes))
    return tuple(p for p, _ in points), tuple(s for _, s in points)


def ring_shard(user_id: int, count: int, vnodes: int = VNODES) -> int:
    hashes, owners = ring_points(count, vnodes)
    i = bisect.bisect_left(hashes, key_hash(user_id))
    return owners[i % len(owners)]


def jump_shard(user_id: int, count: int) -> int:
    """Jump consistent hash (Lamping and Veach, 2014) of key_hash(user_id): 1..count."""
    key, b, j = key_hash(user_id), -1, 0
    while j < count:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b + 1


def directory_shard(region: str, count: int) -> int:
    if region not in REGIONS:
        raise ValueError(f"region={region!r} is not allowed: one of {', '.join(map(repr, REGIONS))}")
    return REGIONS.index(region) % count + 1


@dataclass(frozen=True)
class ShardMap:
    scheme: str
    count: int
    vnodes: int = VNODES

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme={self.scheme!r} is not allowed: one of {', '.join(map(repr, SCHEMES))}")
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"count={self.count!r} is not allowed: an integer from 1 to {MAX_SHARDS}")

    @property
    def by_region(self) -> bool:
        return self.scheme == "directory"

    def home(self, user_id: int, region: str | None = None) -> int:
        """The shard (1..count) that holds this user."""
        if self.scheme == "modulo":
            return modulo_shard(user_id, self.count)
        if self.scheme == "consistent":
            return ring_shard(user_id, self.count, self.vnodes)
        if self.scheme == "jump":
            return jump_shard(user_id, self.count)
        if region is None:
            raise ValueError("the directory scheme routes by region: give the user's region")
        return directory_shard(region, self.count)

    def shards(self) -> list[int]:
        return list(range(1, self.count + 1))

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "count": self.count, "vnodes": self.vnodes}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ShardMap | None":
        return cls(data["scheme"], data["count"], data.get("vnodes", VNODES)) if data else None

    def __str__(self) -> str:
        return f"{self.scheme} over {self.count} shard{'s' if self.count > 1 else ''}"


def shard_name(shard: int) -> str:
    """The service that holds shard `shard`: postgres-shard-N."""
    return f"postgres-shard-{shard}"


def moved_fraction(old: ShardMap, new: ShardMap, users) -> float:
    """The share of `users` ((id, region) pairs or ids) whose home differs between two maps."""
    users = [(u, None) if isinstance(u, int) else u for u in users]
    moved = sum(1 for uid, region in users if old.home(uid, region) != new.home(uid, region))
    return moved / len(users) if users else 0.0


def seeded_region(user_id: int) -> str:
    """The region the stack's seed gives user `user_id` (stack.local.postgres.SCHEMA)."""
    return REGIONS[user_id % len(REGIONS)]
