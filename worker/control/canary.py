"""The canary's verdict: a new version against the old one on the same live traffic. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from .compare import Comparison, Limits, Verdict, compare
from .tally import Counts

MAX_RUN = 3.0
"""A canary with too few answers to judge runs on, up to this many times its `seconds`."""


@dataclass(frozen=True)
class CanaryPolicy:
    """Send `percent` % of live traffic to a ready new version for `seconds` before switching,
    and compare the two arms (compare.py); reject the new version on a regression."""

    percent: float
    seconds: float
    limits: Limits = field(default_factory=Limits)


def judge(
    policy: CanaryPolicy,
    old: Counts,
    new: Counts,
    *,
    old_version: str,
    new_version: str,
    new_exited: bool,
    old_exited: bool,
) -> Comparison:
    """`old` and `new`: what each answered during the canary. A new worker that exited is
    rejected whatever it answered; too few answers: UNJUDGED, and the version is promoted."""
    comparison = compare(policy.limits, old, new, old_version=old_version, new_version=new_version)
    figures = {"percent": policy.percent, "seconds": policy.seconds, **comparison.figures}
    if old_exited and not new_exited:
        figures["ended_early"] = "the old worker exited"
    if new_exited:
        reason = "the new worker exited during the canary"
        figures.update(verdict=str(Verdict.REJECTED), reason=reason)
        comparison = Comparison(Verdict.REJECTED, reason, figures)
    figures["passed"] = comparison.verdict is not Verdict.REJECTED
    return Comparison(comparison.verdict, comparison.reason, figures)
