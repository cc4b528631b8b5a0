"""Poll the registry and tell the supervisor which version to serve."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from ..control import Supervisor
from ..control.backoff import Backoff
from ..threads import in_daemon_thread
from .registry import RegistryError, Resolver, classify

log = logging.getLogger(__name__)


class Watcher:
    """Resolves the served URI every `poll_interval` seconds (once, for a fixed URI), on `poke()`,
    and on `resolve_now()`. While the registry fails it backs off (capped at
    `max_error_interval`) and keeps the current version; it logs each change of state (ok, or
    the kind of error), not each failed poll."""

    def __init__(
        self,
        resolver: Resolver,
        supervisor: Supervisor,
        *,
        poll_interval: float,
        tracked: bool,
        max_error_interval: float = 60.0,
        on_error: Callable[[RegistryError], None] | None = None,
        on_named: Callable[[str], None] | None = None,
    ) -> None:
        self._resolver = resolver
        self._supervisor = supervisor
        self.poll_interval = poll_interval
        self.tracked = tracked
        self._error_backoff = Backoff(
            base=poll_interval, cap=max(max_error_interval, poll_interval)
        )
        self._on_error = on_error or (lambda _error: None)
        # Told each version the registry names, before the supervisor: to prepare it early.
        self._on_named = on_named or (lambda _version: None)
        self._poke = asyncio.Event()
        self._tickets = itertools.count(1)
        self._applied_ticket = 0
        self._next_attempt_at: float | None = None  # monotonic
        self.last_version: str | None = None
        self.last_success: float | None = None
        self.last_error: RegistryError | None = None
        self.last_error_at: float | None = None
        self.failing_since: float | None = None
        self.consecutive_errors = 0
        self.errors = 0

    def poke(self) -> None:
        """Ask the registry now instead of at the next poll (a webhook said something moved)."""
        self._poke.set()

    @property
    def state(self) -> str:
        """`ok`, `unknown` before the first answer, or the kind of the current error."""
        if self.last_error is not None:
            return self.last_error.kind
        return "ok" if self.last_success is not None else "unknown"

    async def run(self) -> None:
        # The caller may have resolved once already (to fail fast on a URI that does not exist).
        asked = self.last_success is not None or self.last_error is not None
        ok = self.last_success is not None
        while not (ok and not self.tracked):  # a fixed URI means the same model forever
            if asked:
                delay = self.poll_interval if ok else self._error_backoff.next_delay()
                self._next_attempt_at = time.monotonic() + delay
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._poke.wait()
            asked = True
            self._next_attempt_at = None
            self._poke.clear()
            ok = await self.resolve_now()

    async def resolve_now(self) -> bool:
        """Ask the registry once and hand the answer to the supervisor. False if it failed.

        Lookups may overlap (the poll loop, `POST /reload`): an answer is dropped when a lookup
        that started later has already been applied, so a slow old answer cannot undo a new one."""
        ticket = next(self._tickets)
        began = time.monotonic()
        try:
            version = await in_daemon_thread(self._resolver.resolve, "registry-lookup")
        except Exception as error:  # noqa: BLE001 - every failure is kept, reported and retried
            if ticket > self._applied_ticket:
                self._applied_ticket = ticket
                self._failed(classify(error))
            return False
        if ticket < self._applied_ticket:
            return True
        self._applied_ticket = ticket
        self._succeeded(version, time.monotonic() - began)
        return True

    def _succeeded(self, version: str, lookup_seconds: float) -> None:
        if self.last_error is not None:
            failing_for = time.time() - (self.failing_since or time.time())
            log.info(
                "registry answers again: version %s (after %d failed lookups in %.0f s)",
                version,
                self.consecutive_errors,
                failing_for,
            )
        elif version != self.last_version:
            log.info("registry: version %s", version)
        self.last_error = None
        self.failing_since = None
        self.consecutive_errors = 0
        self._error_backoff.reset()
        self.last_version = version
        self.last_success = time.time()
        self._on_named(version)
        self._supervisor.want(version, lookup_seconds)

    def _failed(self, error: RegistryError) -> None:
        self.errors += 1
        self.consecutive_errors += 1
        self._on_error(error)
        # The state is the kind of error: its message may change from poll to poll (addresses,
        # request ids) without anything new to tell, so only a new kind is logged.
        if self.last_error is None or self.last_error.kind != error.kind:
            serving = self._supervisor.active.version if self._supervisor.active else "nothing"
            then = "" if error.permanent else ", retrying with backoff"
            log.error(
                "registry lookup failed (%s): %s; still serving %s%s",
                error.kind,
                error,
                serving,
                then,
            )
        else:
            log.debug("registry lookup failed again (%s): %s", error.kind, error)
        if self.failing_since is None:
            self.failing_since = time.time()
        self.last_error = error
        self.last_error_at = time.time()

    def status(self) -> dict[str, Any]:
        retry_in = (
            None
            if self._next_attempt_at is None or self.last_error is None
            else max(0.0, round(self._next_attempt_at - time.monotonic(), 1))
        )
        return {
            "tracked": self.tracked,
            "poll_interval": self.poll_interval,
            "state": self.state,
            "resolved_version": self.last_version,
            "last_success": self.last_success,
            "errors": self.errors,
            "consecutive_errors": self.consecutive_errors,
            "failing_since": self.failing_since,
            "retry_in": retry_in,
            "last_error": None
            if self.last_error is None
            else {
                "kind": self.last_error.kind,
                "permanent": self.last_error.permanent,
                "message": str(self.last_error),
                "at": self.last_error_at,
            },
        }
