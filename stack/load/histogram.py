"""Latency histograms: HdrHistogram at microsecond resolution, mergeable.

Values are recorded in microseconds with 3 significant digits (0.1 % error)
from 1 us up to `highest_us`; anything above is recorded as `highest_us` and
counted in `clamped`, never dropped. Percentiles come from HdrHistogram.
"""
from __future__ import annotations

import sys

import numpy as np
from hdrh.histogram import HdrHistogram

DEFAULT_HIGHEST_US = 3_600_000_000   # one hour: no realistic request goes past it
SIGNIFICANT_DIGITS = 3
SUMMARY_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def _slots(hdr: HdrHistogram, values: np.ndarray) -> np.ndarray:
    """Each value's index in `hdr`'s counts array: HdrHistogram's _counts_index_for, vectorised.

    The bucket is how far the value's bit length (frexp's exponent; exact below
    2**53) reaches past the sub-bucket's bits; the sub-bucket is its top bits.
    """
    unit, half = hdr.unit_magnitude, hdr.sub_bucket_half_count_magnitude
    bucket = np.maximum(np.frexp(values)[1] - unit - (half + 1), 0)
    return ((bucket + 1) << half) + (values >> (bucket + unit)) - hdr.sub_bucket_half_count


class LatencyHistogram:
    __slots__ = ("hdr", "highest_us", "clamped", "_sum_us", "_sum_exact")

    def __init__(self, highest_us: int = DEFAULT_HIGHEST_US):
        self.highest_us = int(highest_us)
        self.hdr = HdrHistogram(1, self.highest_us, SIGNIFICANT_DIGITS)
        self.clamped = 0
        self._sum_us = 0          # exact mean without HdrHistogram's slow get_mean_value
        self._sum_exact = True

    def record_s(self, seconds: float) -> None:
        self.record_us(int(seconds * 1_000_000))

    def record_us(self, us: int) -> None:
        if us < 0:
            us = 0                # clock granularity: a request cannot take negative time
        elif us > self.highest_us:
            us = self.highest_us
            self.clamped += 1
        self.hdr.record_value(us)
        self._sum_us += us

    def record_many_us(self, values: list[int]) -> None:
        """Record a batch of values, exactly as record_us() would one by one.

        HdrHistogram's record_value() is pure Python (~1.5 us a value): here each
        value's slot in its counts array is computed by the library's own formula
        (_counts_index_for), vectorised, and the slots are counted in one pass.
        """
        if not values:
            return
        hdr = self.hdr
        v = np.asarray(values, dtype=np.int64)
        self.clamped += int(np.count_nonzero(v > self.highest_us))
        np.clip(v, 0, self.highest_us, out=v)
        added = np.bincount(_slots(hdr, v))        # as long as the highest slot used
        np.ctypeslib.as_array(hdr.counts)[:len(added)] += added.astype(np.uint64)
        hdr.total_count += len(v)
        hdr.min_value = min(hdr.min_value, int(v.min()))
        hdr.max_value = max(hdr.max_value, int(v.max()))
        self._sum_us += int(v.sum())

    def _counts(self) -> np.ndarray:
        """HdrHistogram's counts array as numpy, up to the slot of the highest value
        recorded (the rest is zeros: skipping it saves most of the work)."""
        hdr = self.hdr
        used = int(_slots(hdr, np.array([hdr.max_value]))[0]) + 1 if hdr.total_count else 0
        return np.ctypeslib.as_array(hdr.counts)[:min(used, hdr.encoder.payload.counts_len)]

    def clear(self) -> None:
        """Empty it for reuse, as HdrHistogram's reset() does but without its Python loop:
        a new histogram costs ~0.4 ms, and a run needs several per interval."""
        self._counts()[:] = 0
        self.hdr.total_count, self.hdr.min_value, self.hdr.max_value = 0, sys.maxsize, 0
        self.clamped, self._sum_us, self._sum_exact = 0, 0, True

    @property
    def count(self) -> int:
        return self.hdr.get_total_count()

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        """Add `other`'s values into this one (in place) and return self."""
        if other.count:
            self.hdr.add(other.hdr)
        self.clamped += other.clamped
        self._sum_us += other._sum_us
        self._sum_exact = self._sum_exact and other._sum_exact
        return self

    __iadd__ = merge

    @classmethod
    def merged(cls, histograms) -> "LatencyHistogram":
        total = cls()
        for h in histograms:
            total.merge(h)
        return total

    def percentiles_ms(self, percentiles=SUMMARY_PERCENTILES) -> dict[float, float | None]:
        """{percentile: milliseconds}; None for every percentile when nothing was recorded."""
        if not self.count:
            return {p: None for p in percentiles}
        # HdrHistogram's own rule (the first bucket whose running count reaches the
        # target, reported as the bucket's highest value; its lowest for p0), with
        # the running count in numpy: its Python loop took ~1.5 ms a call.
        hdr = self.hdr
        running = np.cumsum(self._counts())
        out = {}
        for p in percentiles:
            index = int(np.searchsorted(running, np.uint64(hdr.get_target_count_at_percentile(p))))
            value = hdr.get_value_from_index(index)
            value = hdr.get_highest_equivalent_value(value) if p else hdr.get_lowest_equivalent_value(value)
            out[p] = value / 1000
        return out

    def percentile_ms(self, percentile: float) -> float | None:
        return self.percentiles_ms((percentile,))[percentile]

    def mean_ms(self) -> float | None:
        if not self.count:
            return None
        if self._sum_exact:
            return self._sum_us / self.count / 1000
        return self.hdr.get_mean_value() / 1000

    def max_ms(self) -> float | None:
        return self.hdr.get_max_value() / 1000 if self.count else None

    def min_ms(self) -> float | None:
        return self.hdr.get_min_value() / 1000 if self.count else None

    def summary(self) -> dict:
        """count, min, mean, p50 .. p99.9, max in milliseconds (JSON-able)."""
        out = {"count": self.count, "min_ms": self.min_ms(), "mean_ms": self.mean_ms()}
        for p, v in self.percentiles_ms().items():
            out[f"p{p:g}_ms".replace(".", "_")] = v
        out["max_ms"] = self.max_ms()
        if self.clamped:
            out["clamped"] = self.clamped
        return out

    def encode(self) -> str:
        """HdrHistogram's compressed base64 form: decode() it elsewhere and merge."""
        return self.hdr.encode().decode("ascii")

    @classmethod
    def decode(cls, encoded: str) -> "LatencyHistogram":
        hdr = HdrHistogram.decode(encoded)
        h = cls(hdr.highest_trackable_value)
        h.hdr = hdr
        h._sum_exact = False      # the encoding keeps counts, not the exact sum
        return h

    def __repr__(self) -> str:
        s = self.summary()
        return f"LatencyHistogram(count={s['count']}, p50_ms={s['p50_ms']}, p99_ms={s['p99_ms']})"
