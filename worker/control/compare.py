"""One version against another on the same live traffic: the verdict of a canary and of the
automatic rollback after a switch. No I/O.

Both arms see the same mix of requests, so what fails on both (a client's malformed JSON, a
4xx any version gives) raises both shares alike and does not count against the new version.
What does: a share of non-2xx answers higher than the old arm's by more than the allowed
increase, or a p99 or p50 latency more than `max_latency_ratio` times the old arm's, each by a
margin chance would not explain. Before each arm has `min_requests` answers there is no verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .tally import Counts

Z_REJECT = 3.0
"""How many standard errors a difference must be, to count: one two arms of the same version
show about once in 700 verdicts. Without it, a canary of 20 requests against clients that send
10 % malformed ones would reject a good version one time in five, and one scheduling hiccup
among 20 answers would make their p99 (then their slowest) look like a regression."""


class Verdict(StrEnum):
    PASSED = "passed"
    REJECTED = "rejected"
    UNJUDGED = "unjudged"  # too few answers to tell


@dataclass(frozen=True)
class Limits:
    max_error_increase: float = 0.01  # of the non-2xx share: 0.01 is one percentage point
    max_latency_ratio: float = 2.0  # new p99 / old p99
    min_requests: int = 20  # answers each arm needs before a verdict


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    reason: str | None  # why it was rejected, or why it could not be judged
    figures: dict[str, Any]  # both arms, for the swap's history


def compare(
    limits: Limits, old: Counts, new: Counts, *, old_version: str, new_version: str
) -> Comparison:
    """`old` and `new`: what each arm answered over the comparison."""
    figures: dict[str, Any] = {
        "old": old.figures(old_version),
        "new": new.figures(new_version),
    }
    if min(old.answered, new.answered) < limits.min_requests:
        reason = (
            f"too few answers to judge: {new.answered} from {new_version}, {old.answered} "
            f"from {old_version} (needed: {limits.min_requests} each)"
        )
        return _verdict(Verdict.UNJUDGED, reason, figures)
    increase = new.error_rate - old.error_rate
    z = _z_score(old, new)
    figures["error_increase"] = round(increase, 4)
    figures["z"] = None if math.isinf(z) else round(z, 2)
    if increase > limits.max_error_increase and z >= Z_REJECT:
        reason = (
            f"{new.error_rate:.1%} of {new.answered} answers were not 2xx "
            f"({new.client_errors} 4xx, {new.server_errors} 5xx) against {old.error_rate:.1%} "
            f"on version {old_version} (allowed: +{limits.max_error_increase:.1%})"
        )
        return _verdict(Verdict.REJECTED, reason, figures)
    figures["latency_ratio"] = None
    for q, name in ((0.99, "p99"), (0.5, "p50")):
        old_q, new_q = old.quantile(q), new.quantile(q)
        assert old_q is not None and new_q is not None  # both arms answered
        ratio = new_q / old_q
        if q == 0.99:
            figures["latency_ratio"] = round(ratio, 2)
        else:
            figures["p50_ratio"] = round(ratio, 2)
        if ratio > limits.max_latency_ratio and _slower(new, limits.max_latency_ratio * old_q, q):
            reason = (
                f"{name} latency {new_q * 1000:.1f} ms against {old_q * 1000:.1f} ms on version "
                f"{old_version}: {ratio:.1f} times (allowed: {limits.max_latency_ratio:g})"
            )
            return _verdict(Verdict.REJECTED, reason, figures)
    return _verdict(Verdict.PASSED, None, figures)


def _slower(new: Counts, threshold: float, q: float) -> bool:
    """Whether the new arm's quantile `q` is above `threshold` by more than chance explains:
    more than a share 1 - q of its answers were slower than that, by Z_REJECT standard errors.
    The p99 catches a slow tail; the p50 a version slow throughout, even when one stall of the
    old worker's (nine answers in a row) set the old arm's p99 above the new arm's."""
    share = new.slower_than(threshold) / new.answered
    expected = 1 - q
    return (share - expected) / math.sqrt(q * expected / new.answered) >= Z_REJECT


def _z_score(old: Counts, new: Counts) -> float:
    """How many standard errors the new arm's error share is above the old arm's."""
    pooled = (old.not_ok + new.not_ok) / (old.answered + new.answered)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / old.answered + 1 / new.answered))
    difference = new.error_rate - old.error_rate
    if spread == 0:  # both all 2xx, or both all not: no difference to weigh
        return 0.0 if difference == 0 else math.copysign(math.inf, difference)
    return difference / spread


def _verdict(verdict: Verdict, reason: str | None, figures: dict[str, Any]) -> Comparison:
    figures["verdict"] = str(verdict)
    if reason is not None:
        figures["reason"] = reason
    return Comparison(verdict, reason, figures)
