"""Shadow traffic: copies of live requests sent to a ready new version, whose answers are only
compared with the active worker's, never given to a client. What a run counts, how two answers
are compared, and the verdict. No I/O: the relay sends the copies (proxy/relay/shadow.py).

A pair is settled when both answers are in, whichever comes last; pairs whose client went away
are not compared, and outcomes that come after the run ended are ignored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .compare import Comparison, Verdict
from .tally import BUCKETS, bucket_of, milliseconds, quantile
from .worker import Worker

EXAMPLES_KEPT = 5  # disagreements kept for the swap's history
EXAMPLE_CHARS = 160  # of each answer shown in one


@dataclass(frozen=True)
class ShadowPolicy:
    """Copy `percent` % of live predictions to the new version for `seconds` (once it is warm,
    before a canary or the switch); reject it when fewer than `min_agreement` (0 to 1) of the
    pairs agree. 0: report only. `tolerance`: relative, for numbers in JSON predictions."""

    percent: float
    seconds: float
    tolerance: float = 1e-6
    min_agreement: float = 0.0
    min_pairs: int = 20  # compared pairs before a verdict; the run goes on up to 3 x seconds
    max_in_flight: int = 4  # copies at the new worker at once; more are dropped


@dataclass(frozen=True)
class Reply:
    """One side of a pair: the status (None: no answer came), the body when it was held whole
    (None: streamed, or none), and how long it took."""

    status: int | None
    body: bytes | None
    seconds: float
    error: str | None = None


def disagreement(primary: Reply, shadow: Reply, tolerance: float) -> str | None:
    """Why two answers to the same request differ; None when they agree: the same status and,
    for a 2xx, the same body, or for JSON the same values (numbers within `tolerance`,
    relative). Error bodies are not compared: MLflow's messages list fields in hash order."""
    if shadow.status is None:
        return f"no answer from the new version: {shadow.error}"
    if primary.status != shadow.status:
        return f"status {shadow.status} where the active version said {primary.status}"
    if primary.status is None or not 200 <= primary.status < 300:
        return None
    if primary.body is None or shadow.body is None or primary.body == shadow.body:
        return None  # a streamed answer is compared by status only
    try:
        ours, theirs = json.loads(primary.body), json.loads(shadow.body)
    except ValueError:
        return "different bodies"
    return _differs(ours, theirs, tolerance, "")


def _differs(a: Any, b: Any, tolerance: float, where: str) -> str | None:
    if _number(a) and _number(b):
        if math.isclose(a, b, rel_tol=tolerance, abs_tol=1e-12) or (
            math.isnan(a) and math.isnan(b)
        ):
            return None
        return f"{where or 'value'}: {b!r} where the active version said {a!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where or 'answer'}: keys {sorted(b)} where the active version had {sorted(a)}"
        for key in a:
            found = _differs(a[key], b[key], tolerance, f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where or 'answer'}: {len(b)} items where the active version gave {len(a)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _differs(x, y, tolerance, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if a == b else f"{where or 'value'}: {b!r} where the active version said {a!r}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class ShadowRun:
    """One shadow run, read by the relay while it lasts (roles.shadow). `report` is told each
    outcome, by name (agreed, disagreed, dropped), for the metrics."""

    worker: Worker
    policy: ShadowPolicy
    active_version: str
    report: Callable[[str], None] = lambda _outcome: None
    open: bool = True
    sent: int = 0
    dropped: int = 0
    agreed: int = 0
    disagreed: int = 0
    in_flight: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    primary_latency: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    shadow_latency: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def share(self) -> float:
        return self.policy.percent / 100.0

    @property
    def compared(self) -> int:
        return self.agreed + self.disagreed

    def admit(self) -> ShadowPair | None:
        """A pair for a copy about to be sent, or None: the run is over, or the new worker has
        as many copies as it may (then the copy is dropped, and counted)."""
        if not self.open:
            return None
        if self.in_flight >= self.policy.max_in_flight:
            self.dropped += 1
            self.report("dropped")
            return None
        self.in_flight += 1
        self.sent += 1
        self._idle.clear()
        return ShadowPair(self)

    def copy_done(self) -> None:
        """A copy's answer came, or its sending failed."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> None:
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()

    def settle(self, path: str, primary: Reply, shadow: Reply) -> None:
        if not self.open:
            return
        why = disagreement(primary, shadow, self.policy.tolerance)
        if why is None:
            self.agreed += 1
            self.report("agreed")
        else:
            self.disagreed += 1
            self.report("disagreed")
            if len(self.examples) < EXAMPLES_KEPT:
                self.examples.append(_example(path, why, primary, shadow))
        self.primary_latency[bucket_of(primary.seconds)] += 1
        if shadow.status is not None:
            self.shadow_latency[bucket_of(shadow.seconds)] += 1

    def progress(self) -> dict[str, Any]:
        """What the run is and its counts so far: /status shows these while it lasts."""
        return {
            "percent": self.policy.percent,
            "seconds": self.policy.seconds,
            "sent": self.sent,
            "dropped": self.dropped,
            "compared": self.compared,
            "agreed": self.agreed,
        }

    def figures(self) -> dict[str, Any]:
        compared = self.compared
        p50 = quantile(self.primary_latency, 0.5), quantile(self.shadow_latency, 0.5)
        p99 = quantile(self.primary_latency, 0.99), quantile(self.shadow_latency, 0.99)
        return {
            **self.progress(),
            "agreement": round(self.agreed / compared, 4) if compared else None,
            "active": {
                "version": self.active_version,
                "p50_ms": milliseconds(p50[0]),
                "p99_ms": milliseconds(p99[0]),
            },
            "shadow": {
                "version": self.worker.version,
                "p50_ms": milliseconds(p50[1]),
                "p99_ms": milliseconds(p99[1]),
            },
            "latency_ratio": _ratio(*p99),
            "disagreements": list(self.examples),
        }


class ShadowPair:
    """A live request and its copy: settled once both answers are in."""

    __slots__ = ("_run", "path", "primary", "shadow")

    def __init__(self, run: ShadowRun, path: str = "/invocations") -> None:
        self._run = run
        self.path = path
        self.primary: Reply | None = None
        self.shadow: Reply | None = None

    def primary_answered(self, reply: Reply) -> None:
        self.primary = reply
        if self.shadow is not None:
            self._run.settle(self.path, reply, self.shadow)

    def shadow_answered(self, reply: Reply) -> None:
        self.shadow = reply
        if self.primary is not None:
            self._run.settle(self.path, self.primary, reply)


def judge_shadow(run: ShadowRun) -> Comparison:
    """PASSED, or REJECTED below the policy's agreement; UNJUDGED with too few pairs."""
    policy = run.policy
    figures = run.figures()
    compared = run.compared
    if compared < max(1, policy.min_pairs):
        reason = f"too few pairs to judge: {compared} (needed: {policy.min_pairs})"
        verdict = Verdict.UNJUDGED
    elif run.agreed / compared < policy.min_agreement:
        verdict = Verdict.REJECTED
        first = run.examples[0]["why"] if run.examples else "?"
        reason = (
            f"agreed with version {run.active_version} on {run.agreed / compared:.1%} of "
            f"{compared} shadowed requests (needed: {policy.min_agreement:.1%}); first "
            f"disagreement: {first}"
        )
    else:
        verdict, reason = Verdict.PASSED, None
    figures["verdict"] = str(verdict)
    if reason is not None:
        figures["reason"] = reason
    return Comparison(verdict, reason, figures)


def _example(path: str, why: str, primary: Reply, shadow: Reply) -> dict[str, Any]:
    return {
        "path": path,
        "why": why[:EXAMPLE_CHARS],
        "active": _shown(primary),
        "shadow": _shown(shadow),
    }


def _shown(reply: Reply) -> dict[str, Any]:
    body = reply.body or b""
    text = body[:EXAMPLE_CHARS].decode("utf-8", "replace")
    return {
        "status": reply.status,
        "body": text + ("..." if len(body) > EXAMPLE_CHARS else ""),
        "ms": round(reply.seconds * 1000, 2),
    }


def _ratio(active: float | None, shadow: float | None) -> float | None:
    return None if active is None or shadow is None else round(shadow / active, 2)
