"""Which key (user id) each request uses: uniform or Zipf over 1..n, seeded.

Zipf with exponent s gives key k a probability proportional to 1 / k**s, so a
few hot keys get most of the traffic: what makes caches and hash-based
balancing interesting. Both are deterministic for a given random.Random.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

from .errors import LoadSpecError, int_in, number_in, one_of

KINDS = ("uniform", "zipf")
MAX_KEYS = 10_000_000
MAX_ZIPF_KEYS = 1_000_000   # the cumulative table is one float per key


@dataclass(frozen=True)
class Keys:
    kind: str = "uniform"
    n: int = 10_000          # keys are 1..n
    s: float = 1.1           # Zipf exponent; ignored for uniform

    @classmethod
    def uniform(cls, n: int = 10_000) -> "Keys":
        return cls("uniform", n)

    @classmethod
    def zipf(cls, n: int = 10_000, s: float = 1.1) -> "Keys":
        return cls("zipf", n, s)

    @classmethod
    def of(cls, value) -> "Keys":
        """A Keys from itself or a kind name ("uniform" / "zipf")."""
        if isinstance(value, Keys):
            return value
        if isinstance(value, str):
            one_of("keys", value, KINDS)
            return cls(value)
        raise LoadSpecError("keys", value, "a Keys value or one of 'uniform', 'zipf'")

    def validate(self) -> None:
        one_of("keys.kind", self.kind, KINDS)
        if self.kind == "zipf":
            int_in("keys.n", self.n, 1, MAX_ZIPF_KEYS)
            number_in("keys.s", self.s, 0.0, 10.0, low_open=True)
        else:
            int_in("keys.n", self.n, 1, MAX_KEYS)

    def probabilities(self) -> list[float]:
        """P(key = k) for k = 1..n (index k-1): for tests and for plotting the skew."""
        if self.kind == "uniform":
            return [1.0 / self.n] * self.n
        weights = [k ** -self.s for k in range(1, self.n + 1)]
        total = sum(weights)
        return [w / total for w in weights]

    def sampler(self, rng: random.Random) -> Callable[[int], list[int]]:
        """A function returning the next `count` keys drawn with `rng`."""
        self.validate()
        population = range(1, self.n + 1)
        if self.kind == "uniform":
            return lambda count: rng.choices(population, k=count)
        # choices() bisects the cumulative weights: O(log n) per key after O(n) once.
        cumulative = list(itertools.accumulate(k ** -self.s for k in population))
        return lambda count: rng.choices(population, cum_weights=cumulative, k=count)
