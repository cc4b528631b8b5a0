"""Poll the registry and tell the supervisor which version to serve."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .backoff import Backoff
from .registry import RegistryError, Resolver, classify
from .swap import Supervisor

log = logging.getLogger(__name__)


class Watcher:
    """Resolves the served URI every `poll_interval` seconds (once, for a fixed URI), on `poke()`,
    and on `resolve_now()`. While the registry fails it backs off and keeps the current version."""

    def __init__(
        self,
        resolver: Resolver,
        supervisor: Supervisor,
        *,
        poll_interval: float,
        tracked: bool,
        max_error_interval: float = 60.0,
        on_error: Callable[[RegistryError], None] | None = None,
    ) -> None:
        self._resolver = resolver
        self._supervisor = supervisor
        self.poll_interval = poll_interval
        self.tracked = tracked
        self._error_backoff = Backoff(
            base=poll_interval, cap=max(max_error_interval, poll_interval)
        )
        self._on_error = on_error or (lambda _error: None)
        self._poke = asyncio.Event()
        self.last_version: str | None = None
        self.last_success: float | None = None
        self.last_error: RegistryError | None = None
        self.last_error_at: float | None = None
        self.errors = 0

    def poke(self) -> None:
        self._poke.set()

    async def run(self) -> None:
        # The caller may have resolved once already (to fail fast on a URI that does not exist).
        asked = self.last_success is not None or self.last_error is not None
        ok = self.last_success is not None
        while not (ok and not self.tracked):  # a fixed URI means the same model forever
            if asked:
                delay = self.poll_interval if ok else self._error_backoff.next_delay()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._poke.wait()
            asked = True
            self._poke.clear()
            ok = await self.resolve_now()

    async def resolve_now(self) -> bool:
        """Ask the registry once and hand the answer to the supervisor. False if it failed."""
        try:
            version = await asyncio.to_thread(self._resolver.resolve)
        except Exception as error:  # noqa: BLE001 - every failure is kept, reported and retried
            self._failed(classify(error))
            return False
        if self.last_error is not None:
            log.info("registry answers again: version %s", version)
        elif version != self.last_version:
            log.info("registry: version %s", version)
        self.last_error = None
        self._error_backoff.reset()
        self.last_version = version
        self.last_success = time.time()
        self._supervisor.want(version)
        return True

    def _failed(self, error: RegistryError) -> None:
        self.errors += 1
        self._on_error(error)
        changed = self.last_error is None or (self.last_error.kind, str(self.last_error)) != (
            error.kind,
            str(error),
        )
        if changed:  # once per state change, not once per poll
            serving = self._supervisor.active.version if self._supervisor.active else "nothing"
            log.error(
                "registry lookup failed (%s): %s; still serving %s", error.kind, error, serving
            )
        self.last_error = error
        self.last_error_at = time.time()

    def status(self) -> dict[str, Any]:
        return {
            "tracked": self.tracked,
            "poll_interval": self.poll_interval,
            "resolved_version": self.last_version,
            "last_success": self.last_success,
            "errors": self.errors,
            "last_error": None
            if self.last_error is None
            else {
                "kind": self.last_error.kind,
                "message": str(self.last_error),
                "at": self.last_error_at,
            },
        }
