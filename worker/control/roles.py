"""The roles a worker can have, in one structure: which one serves, which one is tried, which one
is kept warm, which one is coming up, which ones are going away."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .shadow import ShadowRun
from .worker import Worker

SLOTS = ("blue", "green")


class Role(StrEnum):
    ACTIVE = "active"  # takes the traffic
    CANARY = "canary"  # a ready new version taking a share of it before the switch
    LINGERING = "lingering"  # the replaced version, warm, without traffic: instant rollback
    STARTING = "starting"  # being brought up by a swap
    RETIRING = "retiring"  # being drained or stopped


@dataclass
class Roles:
    """Changed by the supervisor's loop only; read by everyone (the proxy's routing, metrics,
    /status)."""

    active: Worker | None = None
    active_since: float | None = None  # wall clock, for /status
    active_from: float = 0.0  # monotonic twin of active_since
    canary: Worker | None = None
    canary_share: float = 0.0
    lingering: Worker | None = None
    lingering_until: float | None = None  # wall clock
    starting: Worker | None = None
    shadow: ShadowRun | None = None  # copies of live requests go to its worker (`starting`)
    # Until they are gone their slot is busy and close() still owes them a stop.
    retiring: set[Worker] = field(default_factory=set)

    def make_active(self, worker: Worker | None) -> None:
        self.active = worker
        self.active_since = time.time() if worker is not None else None
        self.active_from = time.monotonic()

    def all(self) -> list[tuple[Role, Worker]]:
        """Every worker that runs, with its role; each once (a canary is also `starting`)."""
        roles: list[tuple[Role, Worker | None]] = [
            (Role.ACTIVE, self.active),
            (Role.CANARY, self.canary),
            (Role.LINGERING, self.lingering),
            (Role.STARTING, self.starting if self.starting is not self.canary else None),
            *((Role.RETIRING, w) for w in self.retiring),
        ]
        return [(role, w) for role, w in roles if w is not None]

    def slot_busy(self, slot: str) -> bool:
        """A worker still stopping holds its slot."""
        return any(w.slot == slot for w in self.retiring)

    def warm_lingering(self, version: str | None = None) -> Worker | None:
        """The lingering worker, if it is alive (and serves `version`, when given)."""
        worker = self.lingering
        if worker is None or not worker.alive:
            return None
        return worker if version is None or worker.version == version else None

    def in_flight(self) -> int:
        """Requests being answered, by every worker."""
        return sum(w.in_flight.count for _role, w in self.all())

    def kill_now(self) -> None:
        """For a forced exit: every worker, at once."""
        for _role, worker in self.all():
            worker.kill_now()

    def status(self) -> dict[str, Any]:
        return {
            "active": _describe(self.active, since=self.active_since),
            "lingering": _describe(self.lingering, until=self.lingering_until),
            "canary": _describe(self.canary, percent=100 * self.canary_share),
            "shadow": None if self.shadow is None else _describe_shadow(self.shadow),
        }


def _describe(worker: Worker | None, **extra: Any) -> dict[str, Any] | None:
    return None if worker is None else {**worker.status(), **extra}


def _describe_shadow(run: ShadowRun) -> dict[str, Any] | None:
    """The shadowed worker, and how its answers compare so far (the full figures go to the
    swap's history when the run ends)."""
    return _describe(run.worker, **run.progress())
