"""The canary's verdict: a new version against the old one on the same live traffic. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .inflight import InFlight


@dataclass(frozen=True)
class CanaryPolicy:
    """Send `percent` % of live traffic to a ready new version for `seconds` before switching;
    reject it if its share of failed answers exceeds the old worker's by more than
    `max_error_increase` (a fraction: 0.01 is one percentage point)."""

    percent: float
    seconds: float
    max_error_increase: float = 0.01


@dataclass(frozen=True)
class Counts:
    """A worker's answered and failed requests at one moment."""

    answered: int
    failed: int

    @classmethod
    def of(cls, in_flight: InFlight) -> Counts:
        return cls(in_flight.answered, in_flight.failed)

    def since(self, before: Counts) -> Counts:
        return Counts(self.answered - before.answered, self.failed - before.failed)

    @property
    def error_rate(self) -> float:
        return self.failed / self.answered if self.answered else 0.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    figures: dict[str, Any]  # for the swap's history
    reason: str | None  # why it failed


def judge(
    policy: CanaryPolicy,
    old: Counts,
    new: Counts,
    *,
    old_version: str,
    new_version: str,
    new_exited: bool,
    old_exited: bool,
) -> Verdict:
    """`old` and `new`: what each answered during the canary."""
    worse_by = new.error_rate - old.error_rate
    passed = not new_exited and worse_by <= policy.max_error_increase
    figures: dict[str, Any] = {
        "percent": policy.percent,
        "seconds": policy.seconds,
        "old": _arm(old, old_version),
        "new": _arm(new, new_version),
        "passed": passed,
    }
    if old_exited and not new_exited:
        figures["ended_early"] = "the old worker exited"
    reason = None
    if new_exited:
        reason = "the new worker exited during the canary"
    elif not passed:
        reason = (
            f"failed {new.error_rate:.1%} of {new.answered} requests against "
            f"{old.error_rate:.1%} on version {old_version} (allowed: "
            f"+{policy.max_error_increase:.1%})"
        )
    return Verdict(passed, figures, reason)


def _arm(counts: Counts, version: str) -> dict[str, Any]:
    return {
        "answered": counts.answered,
        "failed": counts.failed,
        "version": version,
        "error_rate": round(counts.error_rate, 4),
    }
