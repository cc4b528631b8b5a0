"""Capped exponential backoff with jitter: for failed versions and for a registry that is down."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 2.0
    cap: float = 300.0
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """The wait before the next attempt; grows as base·2ⁿ up to `cap`, jittered in [½, 1]
        of that so many sidecars that failed together do not retry together."""
        ceiling = min(self.cap, self.base * (2**self.attempts))
        self.attempts += 1
        return float(ceiling * (0.5 + 0.5 * self._rng.random()))

    def reset(self) -> None:
        self.attempts = 0
