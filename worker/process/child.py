"""One `mlflow models serve` child process: spawn it, relay its output, reap it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp

from ..control.inflight import InFlight
from ..control.record import WorkerFailed
from ..model.prepare import Step, StepFailed, download_model, is_remote, prepare_env_command
from ..model.stash import LocalCopy, ModelStash
from ..threads import in_daemon_thread
from .output import LINE_LIMIT, relay_lines
from .procfs import group_pids

log = logging.getLogger("mlflow_bluegreen.worker")

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

# The proxy's pool drops idle connections after POOL_KEEPALIVE seconds; the worker keeps them
# open far longer, so the proxy, never the worker, closes an idle connection. Otherwise a request
# can be written onto a connection the worker closed a moment before, and aiohttp never retries
# a POST.
POOL_KEEPALIVE = 15.0
WORKER_KEEPALIVE = 75


def become_subreaper() -> bool:
    """Adopt our workers' orphaned descendants (uvicorn outlives `mlflow models serve` by a
    moment when stopped), so we reap them instead of leaving zombies when we run as PID 1."""
    if _libc is None:
        return False
    return _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connection_pool(
    read_timeout: float, limit: int, *, fresh: bool = False
) -> aiohttp.ClientSession:
    """The proxy's connections to one worker. `fresh` never reuses a connection: for the one
    retry after the worker closed a pooled connection under us."""
    connector = aiohttp.TCPConnector(
        limit=limit, keepalive_timeout=None if fresh else POOL_KEEPALIVE, force_close=fresh
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Forward bytes as they are: no decompression, no headers the client did not send.
        auto_decompress=False,
        # Cookies are the client's and the worker's business: a pool shared by every client
        # must neither store nor send any.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout),
    )


# Run in the child before the real command: SIGKILL it when the sidecar dies, however it dies
# (MLflow itself makes uvicorn follow its parent with SIGTERM, which frees the port). Not a
# preexec_fn: with one, Popen forks the whole sidecar and blocks the event loop meanwhile
# (15-22 ms for a 234 MiB sidecar, measured); without one CPython uses vfork (0.5 ms).
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):  # the parent died before prctl took effect
    os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dying_with_us(command: Sequence[str]) -> list[str]:
    """`command`, made to be SIGKILLed when this process dies. The process keeps its pid: the
    prelude execs the command in place."""
    if _libc is None:
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


class _OldWorkerFailed(Exception):
    """A worker did not become fit to serve. `step` is where it failed; `output` its last lines."""

    def __init__(self, step: str, reason: str, output: list[str] | None = None) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.output = output or []


@dataclass(frozen=True)
class WorkerSpec:
    """How every worker is launched; the same for all versions."""

    env_manager: str = "local"
    workers: int = 1
    timeout: int = 60
    host: str = "127.0.0.1"
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    connections: int = 100
    access_log: bool = False
    # Download the model and build its environment before `mlflow models serve` (see prefetch).
    prefetch: bool = True
    prefetch_timeout: float = 600.0

    def command(self, model_uri: str, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "models", "serve",
            "--model-uri", model_uri,
            "--host", self.host,
            "--port", str(port),
            "--env-manager", self.env_manager,
            "--workers", str(self.workers),
            "--timeout", str(self.timeout),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(self.base_env)
        # `mlflow models serve` finds uvicorn on PATH: make it the one beside our interpreter.
        bin_dir = os.path.dirname(sys.executable)
        # `--env-manager uv` runs `uv venv --python=<the model's version>`, and uv skips the
        # interpreters of virtual environments (ours above included) and, offline, cannot
        # download one: offer the interpreter our venv was made from, last, so a model saved
        # with our Python version builds without a pyenv shim or a system Python on PATH.
        base_bin = os.path.join(sys.base_prefix, "bin")
        tail = base_bin if base_bin != bin_dir and os.path.isdir(base_bin) else ""
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", ""), tail) if p)
        env["UVICORN_TIMEOUT_KEEP_ALIVE"] = str(WORKER_KEEPALIVE)
        env["PYTHONUNBUFFERED"] = "1"
        # A line per request through our log costs more than the request; --access-log turns
        # both the proxy's and the workers' access logs on.
        env.setdefault("UVICORN_ACCESS_LOG", "true" if self.access_log else "false")
        return env


class WorkerProcess:
    """A real `mlflow models serve` on a free loopback port, serving one pinned model version."""

    def __init__(
        self,
        slot: str,
        version: str,
        model_uri: str,
        spec: WorkerSpec,
        stash: ModelStash | None = None,
    ) -> None:
        self.slot = slot
        self.version = version
        self.model_uri = model_uri
        self.spec = spec
        self.in_flight = InFlight()
        self.port: int | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.output: deque[str] = deque(maxlen=200)
        self.session: aiohttp.ClientSession | None = None
        self.fresh_session: aiohttp.ClientSession | None = None
        self.base_url = ""
        # The worker answers 504 itself after `timeout`; this only catches one that hangs.
        self.read_timeout = float(spec.timeout + 10)
        self._popen: subprocess.Popen[bytes] | None = None
        self._exited = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._card: asyncio.Task[ModelCard] | None = None
        self._step: Step | None = None
        self._prepare_deadline = 0.0
        self.model_dir: str | None = None  # the local copy it serves, when it downloaded one
        self._stash = stash
        self._stopping = False
        self._displaced: LocalCopy | None = None  # a copy our own pushed out of the stash
        self.launch_uri = model_uri
        self.timings: dict[str, float] = {}  # seconds per preparation step
        self._log_extra = {"slot": slot, "version": version}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._prepare()
        self.port = free_port(self.spec.host)
        self.base_url = f"http://{self.spec.host}:{self.port}"
        command = self.spec.command(self.launch_uri, self.port)
        log.info("starting worker: %s", " ".join(command), extra=self._log_extra)
        # Popen only forks and execs; the worker's slow start happens after, in wait_ready.
        self._popen = subprocess.Popen(  # noqa: ASYNC220
            dying_with_us(command),
            env=self.spec.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop uvicorn with it
        )
        self.pid = self._popen.pid
        self.started_at = time.monotonic()
        self.session = connection_pool(self.read_timeout, self.spec.connections)
        self.fresh_session = connection_pool(self.read_timeout, self.spec.connections, fresh=True)
        assert self._popen.stdout is not None
        self._tasks = [
            asyncio.create_task(self._relay(self._popen.stdout), name=f"relay-{self.slot}"),
            asyncio.create_task(self._reap_until_exit(), name=f"reap-{self.slot}"),
        ]
        # Read the MLmodel (warm-up payload, signature) while the worker boots, not after.
        self._card = asyncio.create_task(asyncio.to_thread(read_model_card, self.launch_uri))

    async def _prepare(self) -> None:
        """Fetch the model and build its environment, each step timed, before the boot. All of
        it within `prefetch_timeout`."""
        self._prepare_deadline = time.monotonic() + self.spec.prefetch_timeout
        if self.spec.prefetch and is_remote(self.model_uri):
            kept = self._stash.take(self.version) if self._stash is not None else None
            if kept is not None:
                log.info(
                    "serving the copy of the worker that exited: %s",
                    kept.launch_uri,
                    extra=self._log_extra,
                )
                self.model_dir, self.launch_uri = kept.directory, kept.launch_uri
            else:
                self.model_dir = tempfile.mkdtemp(prefix=f"mlflow-bluegreen-v{self.version}-")
                self.launch_uri = await self._download(self.model_dir)
        if self.spec.env_manager != "local":
            await self._run_step(
                "prepare_env", prepare_env_command(self.launch_uri, self.spec.env_manager)
            )

    async def _download(self, destination: str) -> str:
        """The pinned version's artifacts into `destination`; where they landed. In a thread of
        ours rather than a child process: mlflow is imported here already, and a child would
        spend seconds importing it again on every swap."""
        log.info("download: %s", self.model_uri, extra=self._log_extra)
        began = time.monotonic()
        remaining = max(self._prepare_deadline - began, 1.0)
        try:
            async with asyncio.timeout(remaining):
                local = await in_daemon_thread(
                    lambda: download_model(self.model_uri, destination), f"download-{self.slot}"
                )
        except TimeoutError as error:
            raise self._failure("download", f"took more than {remaining:g} s") from error
        except Exception as error:  # any failure rejects this version, with its reason
            raise self._failure("download", f"{type(error).__name__}: {error}") from error
        self.timings["download"] = round(time.monotonic() - began, 3)
        return local

    async def _run_step(self, name: str, command: list[str]) -> list[str]:
        log.info("%s: %s", name, " ".join(command), extra=self._log_extra)
        began = time.monotonic()

        self._step = Step(dying_with_us(command), self.spec.environment(), self._note_output)
        try:
            output = await self._step.run(max(self._prepare_deadline - time.monotonic(), 1.0))
        except StepFailed as error:
            raise self._failure(name, str(error)) from error
        finally:
            self._step = None
        self.timings[name] = round(time.monotonic() - began, 3)
        return output

    @property
    def alive(self) -> bool:
        return self._popen is not None and self.returncode is None

    async def wait_exit(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    async def wait_ready(self, timeout: float) -> None:
        """Return once `GET /ping` answers 200; raise WorkerFailed if the process exits first or
        `timeout` seconds pass."""
        assert self.session is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.returncode is not None:
                raise self._failure("start", f"exited with code {self.returncode} before ready")
            if time.monotonic() > deadline:
                raise self._failure("start", f"not ready after {timeout:g} s")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(
                    f"{self.base_url}/ping", timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    await response.read()
                    if response.status == 200:
                        return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await self._exited.wait()

    async def model_card(self) -> ModelCard:
        """What the version's MLmodel says; WorkerFailed if it cannot be read."""
        assert self._card is not None
        try:
            return await asyncio.shield(self._card)
        except Exception as error:
            raise self._failure("inspect", f"could not read the MLmodel: {error}") from error

    async def input_schema(self) -> Any | None:
        return (await self.model_card()).inputs

    async def warm_up(self) -> bool:
        """POST the model's saved serving input example; False when the model has none."""
        assert self.session is not None
        payload = (await self.model_card()).serving_example
        if payload is None:
            return False
        try:
            async with self.session.post(
                f"{self.base_url}/invocations",
                data=payload.encode(),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.spec.timeout + 10),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._failure("warm-up", f"request failed: {error!r}") from error
        if not 200 <= response.status < 300:
            text = body[:300].decode(errors="replace")
            raise self._failure("warm-up", f"answered {response.status}: {text}")
        return True

    async def healthy(self, timeout: float = 2.0) -> bool:
        """One `GET /ping`: True on 200 within `timeout`."""
        if not self.alive or self.session is None:
            return False
        try:
            async with self.session.get(
                f"{self.base_url}/ping", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the worker's whole process group (mlflow, uvicorn, its workers)."""
        return group_rss_bytes(self.pid) if self.alive and self.pid is not None else 0

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the worker's process group, SIGKILL what is left after `grace`, reap it all."""
        self._stopping = True
        if self._step is not None:
            self._step.kill()
        if self._popen is not None and self._group_alive():
            self._signal_group(signal.SIGTERM)
            if not await self._wait_group_gone(grace):
                log.warning(
                    "worker did not stop within %g s; killing it", grace, extra=self._log_extra
                )
                self._signal_group(signal.SIGKILL)
                await self._wait_group_gone(10.0)
        await self._close()

    def kill_now(self) -> None:
        """For a forced exit: no waiting, no cleanup beyond the signal."""
        if self._popen is not None:
            self._signal_group(signal.SIGKILL)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._card is not None:
            self._card.cancel()
        for session in (self.session, self.fresh_session):
            if session is not None:
                await session.close()
        if self._popen is not None and self._popen.stdout is not None:
            self._popen.stdout.close()
        # Its own copy, unless it went to the stash when the worker died; or the one that went
        # out of the stash for it.
        displaced = self._displaced.directory if self._displaced is not None else None
        for directory in (self.model_dir, displaced):
            if directory is not None:
                await asyncio.to_thread(shutil.rmtree, directory, True)
        self.model_dir = self._displaced = None

    def _keep_copy_for_restart(self) -> None:
        """The worker exited by itself: its copy goes to the stash at once, before whoever
        watches for the exit starts a replacement that looks for it there."""
        if self.model_dir is None or self._stash is None:
            return
        copy = LocalCopy(self.version, self.model_dir, self.launch_uri)
        self.model_dir = None
        self._displaced = self._stash.keep(copy)

    def status(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "version": self.version,
            "model_uri": self.model_uri,
            "served_from": self.launch_uri,
            "pid": self.pid,
            "port": self.port,
            "alive": self.alive,
            "in_flight": self.in_flight.count,
            "answered": self.in_flight.answered,
            "failed": self.in_flight.failed,
            "rss_bytes": self.rss_bytes(),
        }

    # -- processes -------------------------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def _group_alive(self) -> bool:
        assert self.pid is not None
        self._reap()
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def _wait_group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._group_alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _reap(self) -> None:
        """Collect every exited process of the worker's group that is our child (the leader, and
        with a subreaper also its orphaned uvicorn)."""
        assert self.pid is not None
        while True:
            try:
                pid, status = os.waitpid(-self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._popen is not None:
                    self._popen.returncode = self.returncode
                if not self._stopping:
                    self._keep_copy_for_restart()
                self._exited.set()

    async def _reap_until_exit(self) -> None:
        # Polling is cheap (a syscall every 100 ms) and cannot race the event loop's own child
        # watcher the way a SIGCHLD handler of ours could.
        while self.returncode is None:
            self._reap()
            if self.returncode is None:
                await asyncio.sleep(0.1)
        level = logging.INFO if self.returncode in (0, -signal.SIGTERM) else logging.WARNING
        log.log(level, "worker exited with code %s", self.returncode, extra=self._log_extra)
        # Whatever the leader left behind in its group goes with it.
        if self._group_alive():
            self._signal_group(signal.SIGTERM)
            if not await self._wait_group_gone(5.0):
                self._signal_group(signal.SIGKILL)
                await self._wait_group_gone(5.0)

    async def _relay(self, pipe: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            await relay_lines(reader, self._note_output)
        finally:
            transport.close()

    def _note_output(self, line: str) -> None:
        self.output.append(line)
        log.info("%s", line, extra=self._log_extra)

    def _failure(self, step: str, reason: str) -> WorkerFailed:
        lines = list(self.output)
        cause = first_exception(lines)
        if cause:
            reason = f"{reason}: {cause}"
        return WorkerFailed(step, reason, lines[-20:])


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b(: .+)?$")


def first_exception(lines: list[str]) -> str | None:
    """The first `SomeError: message` line of a worker's output: the root cause, which MLflow's
    own wrapper traceback ("Command ... returned non zero return code") follows and hides."""
    for line in lines:
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None


@dataclass(frozen=True)
class ModelCard:
    """What a swap needs from a version's MLmodel file."""

    serving_example: str | None  # the JSON body MLflow saved to exercise /invocations
    inputs: Any | None  # the signature's input `mlflow.types.Schema`


def read_model_card(model_uri: str) -> ModelCard:
    """Blocking (it may download two small files): run it in a thread."""
    from mlflow.models import Model
    from mlflow.models.utils import load_serving_example

    model = Model.load(model_uri)
    inputs = model.signature.inputs if model.signature is not None else None
    info = model.saved_input_example_info or {}
    if not info.get("serving_input_path"):
        return ModelCard(None, inputs)
    return ModelCard(str(load_serving_example(model_uri)), inputs)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def group_rss_bytes(pgid: int) -> int:
    """Sum of resident memory of the processes in group `pgid`, from /proc (0 off Linux)."""
    total = 0
    for pid in group_pids(pgid):
        # A process that exited while we looked counts for nothing.
        with (
            contextlib.suppress(OSError, IndexError, ValueError),
            open(f"/proc/{pid}/statm", "rb") as statm,
        ):
            total += int(statm.read().split()[1]) * _PAGE_SIZE
    return total
