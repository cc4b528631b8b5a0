"""What a worker answered, as counts a verdict can subtract and compare: answers by status class
and a latency histogram. No I/O.

The histogram has fixed, geometric buckets (each 20 % wider than the one before, 0.5 ms to
2 minutes), so two snapshots subtract bucket by bucket and a percentile costs one pass. A
percentile is read as the upper bound of its bucket: at most 20 % high, the same way for both
arms of a comparison."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_FIRST_BOUND = 0.0005
_GROWTH = 1.2
BOUNDS: tuple[float, ...] = tuple(
    _FIRST_BOUND * _GROWTH**k
    for k in range(math.ceil(math.log(120 / _FIRST_BOUND) / math.log(_GROWTH)) + 1)
)
"""Upper bounds of the latency buckets, in seconds; one more bucket holds what is slower."""

BUCKETS = len(BOUNDS) + 1


def bucket_of(seconds: float) -> int:
    return bisect_left(BOUNDS, seconds)


@dataclass(frozen=True)
class Counts:
    """A worker's answers at one moment (or between two moments: `since`)."""

    ok: int = 0  # 2xx
    client_errors: int = 0  # 4xx: a request the model refused, or a malformed one
    server_errors: int = 0  # 5xx, the worker's or ours (502: it died or broke; 504: too slow)
    other: int = 0  # 1xx and 3xx: not a success either
    latency: tuple[int, ...] = (0,) * BUCKETS  # answers per bucket of BOUNDS

    @property
    def answered(self) -> int:
        return self.ok + self.client_errors + self.server_errors + self.other

    @property
    def not_ok(self) -> int:
        return self.answered - self.ok

    @property
    def error_rate(self) -> float:
        """The share of answers that were not 2xx."""
        return self.not_ok / self.answered if self.answered else 0.0

    def since(self, before: Counts) -> Counts:
        return Counts(
            self.ok - before.ok,
            self.client_errors - before.client_errors,
            self.server_errors - before.server_errors,
            self.other - before.other,
            tuple(a - b for a, b in zip(self.latency, before.latency, strict=True)),
        )

    def quantile(self, q: float) -> float | None:
        return quantile(self.latency, q)

    def slower_than(self, seconds: float) -> int:
        """Answers certainly slower than `seconds`: those in buckets that begin above it."""
        first = bisect_left(BOUNDS, seconds) + 1  # bucket i holds (BOUNDS[i-1], BOUNDS[i]]
        return sum(self.latency[first:])

    def figures(self, version: str) -> dict[str, Any]:
        """For a swap's history: what one arm of a comparison answered."""
        return {
            "version": version,
            "answered": self.answered,
            "2xx": self.ok,
            "4xx": self.client_errors,
            "5xx": self.server_errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": milliseconds(self.quantile(0.5)),
            "p99_ms": milliseconds(self.quantile(0.99)),
        }


def quantile(histogram: Sequence[int], q: float) -> float | None:
    """Seconds within which a share `q` of the answers in `histogram` (counts per bucket of
    BOUNDS) came; None: no answers. Past the last bound: one bucket more, as if the slowest
    bucket were bounded too."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1] * _GROWTH
    raise AssertionError("the buckets add up to their total")


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
