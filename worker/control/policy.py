"""How a swap makes room for the new version: beside the old one (availability), or in its
place (memory). A decision without I/O: the memory figures are handed in."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# A new worker of the same model needs about what the old one holds, and more for a moment
# while it loads: a margin of 30 % over the active worker's RSS (not measured per model).
HEADROOM_FACTOR = 1.3


class SwapPolicy(StrEnum):
    AVAILABILITY = "availability"  # start the new worker beside the old one: no wait
    MEMORY = "memory"  # stop the old worker first: requests wait, one model in memory
    AUTO = "auto"  # memory when the headroom would not hold a second copy


@dataclass(frozen=True)
class PolicyChoice:
    policy: SwapPolicy  # AVAILABILITY or MEMORY, never AUTO
    why: str


def choose(asked: SwapPolicy, headroom: int | None, active_rss: int) -> PolicyChoice:
    """`headroom`: bytes the sidecar may still use before its memory limit (None: no limit
    known); `active_rss`: what the serving worker holds now."""
    if asked is not SwapPolicy.AUTO:
        return PolicyChoice(asked, f"--swap-policy {asked}")
    if headroom is None:
        return PolicyChoice(SwapPolicy.AVAILABILITY, "auto: no memory limit known")
    needed = int(active_rss * HEADROOM_FACTOR)
    if headroom < needed:
        return PolicyChoice(
            SwapPolicy.MEMORY,
            f"auto: {_mib(headroom)} free under the memory limit, less than "
            f"{HEADROOM_FACTOR:g} x the active worker's {_mib(active_rss)}",
        )
    return PolicyChoice(
        SwapPolicy.AVAILABILITY,
        f"auto: {_mib(headroom)} free under the memory limit holds "
        f"{HEADROOM_FACTOR:g} x the active worker's {_mib(active_rss)}",
    )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"
