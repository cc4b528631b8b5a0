"""The local model copy of a worker that died, kept for the worker that replaces it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalCopy:
    version: str
    directory: str  # what to delete once nobody serves from it
    launch_uri: str  # the model inside it, as `mlflow models serve` is given it


class ModelStash:
    """Holds at most one copy: that of the last worker that exited by itself. Its restart then
    needs neither the registry, which may be what is down, nor the time of a download. The next
    copy kept, or `clear()`, gives the previous one back for deletion; it is never served twice
    at once, since `take()` hands it over."""

    def __init__(self) -> None:
        self._copy: LocalCopy | None = None

    def keep(self, copy: LocalCopy) -> LocalCopy | None:
        """Keep `copy`; the copy it displaces (the caller deletes it), if any."""
        displaced, self._copy = self._copy, copy
        return displaced

    def take(self, version: str) -> LocalCopy | None:
        """The kept copy if it is of `version`; it is the caller's from then on."""
        copy = self._copy
        if copy is None or copy.version != version:
            return None
        self._copy = None
        return copy

    def clear(self) -> LocalCopy | None:
        """At shutdown: the copy still kept, for the caller to delete."""
        copy, self._copy = self._copy, None
        return copy
