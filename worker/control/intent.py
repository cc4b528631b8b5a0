"""What should serve: the version wanted, whether a rollback pinned it, and why it changed.
Intent only; which worker serves is the roles' business (roles.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")


@dataclass
class Intent:
    wanted: str | None = None
    registry_version: str | None = None  # what the registry names, pinned or not
    pinned: dict[str, Any] | None = None  # set by a rollback, cleared by resume()
    next_cause: str = "initial"  # why the next swap to `wanted` happens
    lookup_seconds: float | None = None  # how long the registry took to name `wanted`

    def registry_names(self, version: str, lookup_seconds: float | None) -> bool:
        """The registry named `version`; whether that changes what is wanted (not while
        pinned: then it is only noted, for resume())."""
        if version != self.wanted:
            self.lookup_seconds = lookup_seconds
        self.registry_version = version
        if self.pinned is not None:
            if version != self.pinned.get("registry_version"):
                log.info("registry names %s; pinned to %s until resumed", version, self.wanted)
                self.pinned["registry_version"] = version
            return False
        self.want(version, "registry moved")
        return True

    def want(self, version: str, cause: str) -> None:
        if version != self.wanted:
            if self.wanted is not None:
                log.info("wanted version %s -> %s (%s)", self.wanted, version, cause)
                self.next_cause = cause
            self.wanted = version

    def pin(self, version: str) -> None:
        """Stay on `version` whatever the registry says, until resume()."""
        self.pinned = {
            "version": version,
            "since": time.time(),
            "registry_version": self.registry_version,
        }
        log.warning("rollback to %s requested: pinned there until resumed", version)
        self.want(version, "rollback")

    def resume(self) -> bool:
        """Follow the registry again; whether that may change what is wanted."""
        if self.pinned is None:
            return False
        log.info("resumed: following the registry again (%s)", self.registry_version)
        self.pinned = None
        if self.registry_version is None:
            return False
        self.want(self.registry_version, "resume after rollback")
        return True

    def take_lookup_seconds(self) -> float | None:
        seconds, self.lookup_seconds = self.lookup_seconds, None
        return seconds
