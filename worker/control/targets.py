"""Which version the loop brings up next, and in which slot: decisions without I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .failures import Failures
from .roles import SLOTS, Roles

RetryDelay = Callable[[str], float]
"""Seconds until a version may be tried again (0 or less: now)."""


def next_target(
    wanted: str | None,
    roles: Roles,
    retry_delay: RetryDelay,
    served: Iterable[str],
    pinned: bool,
) -> str | None:
    """The version to serve next, or None when what serves is what is wanted. With nothing
    serving and the wanted version backing off after a failure: the latest other version that
    took traffic (`served`, oldest first), to serve meanwhile; never while pinned."""
    if wanted is None:
        return None
    if roles.active is not None:
        return None if roles.active.version == wanted else wanted
    if retry_delay(wanted) > 0 and not pinned:
        for version in reversed(list(served)):
            if version != wanted and retry_delay(version) <= 0:
                return version
    return wanted


def idle_slot(roles: Roles, last_slot: str | None) -> str:
    """The slot a new worker goes in: the one the active worker (or, with none, the last one
    that served) is not in."""
    busy = roles.active.slot if roles.active is not None else last_slot
    return SLOTS[1] if busy == SLOTS[0] else SLOTS[0]


def retry_delay(version: str, roles: Roles, failures: Failures) -> float:
    """Seconds until `version` may be tried again."""
    if roles.warm_lingering(version) is not None:
        return 0.0  # it served fine a moment ago: no backoff applies
    return failures.retry_in(version)
