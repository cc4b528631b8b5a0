"""Everything `mlflow-bluegreen serve` was told, after validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..worker.control import CanaryPolicy, Limits, ShadowPolicy, Trials


@dataclass(frozen=True)
class Config:
    model_uri: str
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    tracking_uri: str | None = None
    env_manager: str = "local"
    workers: int = 1
    timeout: int = 60
    poll_interval: float = 5.0
    startup_timeout: float = 600.0
    drain_timeout: float = 30.0
    shutdown_delay: float = 0.0
    queue_timeout: float = 30.0
    max_body_size: int = 64 * 1024 * 1024
    keepalive_timeout: float = 75.0
    linger: float = 0.0
    crash_window: float = 60.0
    allow_signature_change: bool = False
    canary_percent: float = 0.0
    canary_seconds: float = 60.0
    canary_max_error_increase: float = 0.01
    canary_max_latency_ratio: float = 2.0
    canary_min_requests: int = 20
    shadow_percent: float = 0.0
    shadow_seconds: float = 30.0
    shadow_tolerance: float = 1e-6
    shadow_min_agreement: float = 0.0
    auto_rollback: bool = False
    swap_policy: str = "availability"
    memory_limit: int | None = None  # bytes; None: the cgroup's memory.max
    direct_start: bool = True  # the scoring server without the CLI process (spec.py)
    spare: bool = True  # keep a pre-warmed interpreter for the next version's worker
    # Secrets stay out of repr, so a logged config is safe.
    admin_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    log_format: str = "text"
    log_level: str = "INFO"
    access_log: bool = False
    # The environment workers start from: the sidecar's own, before it tuned its registry client.
    worker_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def limits(self) -> Limits:
        """What a new version is judged by against the old one: canary and rollback."""
        return Limits(
            self.canary_max_error_increase,
            self.canary_max_latency_ratio,
            self.canary_min_requests,
        )

    def trials(self) -> Trials:
        canary = shadow = None
        if self.canary_percent > 0:
            canary = CanaryPolicy(self.canary_percent, self.canary_seconds, self.limits())
        if self.shadow_percent > 0:
            shadow = ShadowPolicy(
                self.shadow_percent,
                self.shadow_seconds,
                tolerance=self.shadow_tolerance,
                min_agreement=self.shadow_min_agreement,
                min_pairs=self.canary_min_requests,
            )
        after_switch = self.limits() if self.auto_rollback and self.linger > 0 else None
        return Trials(shadow, canary, after_switch)
