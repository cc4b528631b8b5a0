"""Puts the parts together and runs them: ports, supervisor, watcher, and an ordered shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..worker.control import (
    NoObserver,
    Observers,
    Supervisor,
    SwapPolicy,
    SwapRecord,
    Worker,
)
from ..worker.model.early import EarlyFailed, EarlyPreparations
from ..worker.model.prepare import Preparation
from ..worker.model.stash import ModelStash
from ..worker.model.uri import ModelRef, parse_model_uri
from ..worker.model.venv import PreparedEnv
from ..worker.model_worker import ModelWorker
from ..worker.process.lifeline import become_subreaper
from ..worker.process.memory import group_rss_bytes, memory_headroom
from ..worker.spare import SpareKeeper
from ..worker.spec import WorkerSpec
from ..worker.tracking.registry import FixedResolver, RegistryResolver, Resolver
from ..worker.tracking.watcher import Watcher
from .admin.app import build_admin_app
from .admin.metrics import Metrics, WorkerCollector
from .config import Config
from .relay.forward import Forwarder
from .relay.pools import Pools
from .relay.port import PublicPort

log = logging.getLogger(__name__)


class Sidecar:
    """The long-lived objects of one sidecar, wired together."""

    def __init__(self, config: Config, resolver: Resolver | None = None) -> None:
        self.config = config
        self.ref: ModelRef = parse_model_uri(config.model_uri)
        spec = WorkerSpec(
            env_manager=config.env_manager,
            workers=config.workers,
            timeout=config.timeout,
            base_env=config.worker_env,
            access_log=config.access_log,
            prefetch_timeout=config.startup_timeout,
            direct=config.direct_start,
        )
        ref = self.ref
        self.stash = ModelStash()  # a dead worker's model copy, for its restart
        stash = self.stash
        # A pre-warmed interpreter for the next version's worker (spare.py).
        self.spares = SpareKeeper(
            spec, enabled=config.spare, preload=self._flavors_served, where=self._env_served
        )
        spares = self.spares
        # Downloads (and environments) begun as soon as the registry names a version.
        self.early = EarlyPreparations(
            lambda version, uri: Preparation(
                version,
                uri,
                env_manager=spec.env_manager,
                environment=spec.environment(),
                stash=None,
                on_line=lambda _line: None,
                fail=lambda step, reason: EarlyFailed(f"{step}: {reason}"),
                # No slot yet, and log fields slot+version name a worker: the URI in its
                # lines names the version. The worker that adopts it gives it its own.
                log_extra={},
            ),
            env_manager=spec.env_manager,
            timeout=config.startup_timeout,
        )
        early = self.early if spec.prefetch else None
        self.supervisor = Supervisor(
            lambda slot, version: ModelWorker(
                slot, version, ref.launch_uri(version), spec, stash, spares=spares, early=early
            ),
            startup_timeout=config.startup_timeout,
            drain_timeout=config.drain_timeout,
            linger=config.linger,
            crash_window=config.crash_window,
            trials=config.trials(),
            allow_signature_change=config.allow_signature_change,
            swap_policy=SwapPolicy(config.swap_policy),
            memory_headroom=lambda: memory_headroom(config.memory_limit, self._memory_in_use),
        )
        self.metrics = Metrics(CollectorRegistry(), in_flight=self.supervisor.in_flight)
        self.metrics.registry.register(WorkerCollector(self.supervisor.workers))
        self.supervisor.observer = self.metrics
        if resolver is None:
            resolver = (
                RegistryResolver(ref, config.tracking_uri) if ref.tracked else FixedResolver(ref)
            )
        self.watcher = Watcher(
            resolver,
            self.supervisor,
            poll_interval=config.poll_interval,
            tracked=ref.tracked,
            on_error=self.metrics.registry_error,
            on_named=self._prepare_early,
        )
        self.started_at = time.time()

    def _prepare_early(self, version: str) -> None:
        """The registry names `version`: unless it is wanted or runs already, start its
        download now, before the loop gets to its swap."""
        supervisor = self.supervisor
        running = {worker.version for _role, worker in supervisor.workers()}
        if self.ref.tracked and version != supervisor.wanted and version not in running:
            self.early.begin(version, self.ref.launch_uri(version))

    def _memory_in_use(self) -> int:
        """The sidecar's own resident memory, its workers' and its spare's."""
        own = group_rss_bytes(os.getpgid(0)) + self.spares.rss_bytes()
        return own + sum(worker.rss_bytes() for _role, worker in self.supervisor.workers())

    def _flavors_served(self) -> list[str]:
        """What the active version's model loads with: a spare imports it beforehand."""
        active = self.supervisor.active
        return active.flavor_modules() if isinstance(active, ModelWorker) else []

    def _env_served(self) -> PreparedEnv | None:
        """The virtual environment the active version is served in: where a spare waits."""
        active = self.supervisor.active
        return active.venv if isinstance(active, ModelWorker) else None

    def status(self) -> dict[str, Any]:
        return {
            "model_uri": self.config.model_uri,
            "tracked": self.ref.tracked,
            "tracks": self.ref.describe() if self.ref.tracked else None,
            "started_at": self.started_at,
            "ready": self.supervisor.ready,
            "registry": self.watcher.status(),
            **self.supervisor.status(),
            "spare": self.spares.status(),
        }

    async def close_workers(self) -> None:
        """Stop every worker, then delete the model copy kept for a restart, if any."""
        await self.supervisor.close()
        await self.early.close()
        await self.spares.close()
        copy = self.stash.clear()
        if copy is not None:
            await asyncio.to_thread(shutil.rmtree, copy.directory, True)


class _MakesSpares(NoObserver):
    def __init__(self, spares: SpareKeeper) -> None:
        self._spares = spares

    def swap_finished(self, record: SwapRecord) -> None:
        self._spares.replenish()  # after a quiet while: the swap's workers settle first


class _ClosesPools(NoObserver):
    def __init__(self, pools: Pools) -> None:
        self._pools = pools

    def worker_stopped(self, worker: Worker) -> None:
        self._pools.worker_stopped(worker)


def _cannot_listen(host: str, port: int, what: str, error: OSError) -> SystemExit:
    return SystemExit(f"mlflow-bluegreen: cannot listen on {host}:{port} ({what}): {error}")


async def _start_site(runner: web.BaseRunner, host: str, port: int, what: str) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise _cannot_listen(host, port, what, error) from error


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    sidecar = Sidecar(config)
    become_subreaper()
    loop = asyncio.get_running_loop()

    forwarder = Forwarder(
        sidecar.supervisor,
        sidecar.metrics.observe_request,
        queue_timeout=config.queue_timeout,
        max_body_size=config.max_body_size,
        body_timeout=float(config.timeout),
        # The worker answers 504 itself after `timeout`; this only catches one that hangs.
        read_timeout=float(config.timeout + 10),
    )
    public = PublicPort(
        forwarder, access_log=config.access_log, keepalive_timeout=config.keepalive_timeout
    )
    # The relay's pools to a worker close when the supervisor says it has stopped.
    sidecar.supervisor.observer = Observers(
        [sidecar.metrics, _ClosesPools(forwarder.pools), _MakesSpares(sidecar.spares)]
    )
    try:
        await public.start(config.host, config.port)
    except OSError as error:
        raise _cannot_listen(config.host, config.port, "public port", error) from error
    admin = web.AppRunner(build_admin_app(sidecar), access_log=None)
    try:
        await _start_site(admin, config.admin_host, config.admin_port, "admin port")
    except SystemExit:
        await public.close(0)
        raise

    # A URI the registry says does not exist will not start existing by itself: stop now, loudly.
    # A registry that does not answer may come back: keep trying and serve 503 meanwhile.
    if not await sidecar.watcher.resolve_now():
        lookup_error = sidecar.watcher.last_error
        if lookup_error is not None and lookup_error.permanent:
            log.error("cannot serve %s: %s", config.model_uri, lookup_error)
            await admin.cleanup()
            await public.close(0)
            return 2

    stop = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        # Only note it; the shutdown below runs in the main flow.
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            stop.set()
        else:
            log.warning("second signal: killing workers and exiting now")
            sidecar.supervisor.kill_now()
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    tasks = [
        asyncio.create_task(sidecar.supervisor.run(), name="supervisor"),
        asyncio.create_task(sidecar.watcher.run(), name="watcher"),
    ]
    log.info(
        "serving %s on http://%s:%d (admin http://%s:%d)",
        config.model_uri,
        config.host,
        config.port,
        config.admin_host,
        config.admin_port,
    )
    waiter = asyncio.create_task(stop.wait())
    pending: set[asyncio.Task[Any]] = {waiter, *tasks}
    crashed: list[asyncio.Task[Any]] = []
    while not stop.is_set() and not crashed:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        # The watcher of a fixed URI ends once it has resolved; only an exception is a crash.
        crashed = [t for t in done if t is not waiter and t.exception() is not None]
    for task in crashed:
        log.error("%s stopped unexpectedly", task.get_name(), exc_info=task.exception())

    began = time.monotonic()
    forwarder.closing = True
    if config.shutdown_delay and not crashed:
        log.info("shutting down: /ping answers 503, still serving for %g s", config.shutdown_delay)
        await asyncio.sleep(config.shutdown_delay)
    log.info("shutting down: no new connections, finishing in-flight requests")
    await public.close(config.drain_timeout)  # stop accepting, let answers finish
    for task in (*tasks, waiter):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await sidecar.close_workers()
    await admin.cleanup()
    log.info("stopped in %.2f s", time.monotonic() - began)
    return 1 if crashed else 0
