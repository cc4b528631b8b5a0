"""One child process in a process group of its own: spawn it, relay its output, reap it, signal
it and stop it. Nothing here knows what the process serves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from .lifeline import dying_with_us
from .output import LINE_LIMIT, relay_lines

log = logging.getLogger("mlflow_bluegreen.worker")


class ChildProcess:
    """Started by `spawn`; `on_line` gets each line it prints; `exited_by_itself` is called as
    soon as its exit is reaped, unless we stopped it. Both, `log_extra` and `what` (its name in
    the logs) may be changed while it runs (a spare changes hands). With `stdin_pipe`, `send`
    writes to its stdin."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        on_line: Callable[[str], None],
        *,
        name: str,
        log_extra: Mapping[str, Any],
        exited_by_itself: Callable[[], None] | None = None,
        stdin_pipe: bool = False,
        what: str = "worker",
    ) -> None:
        self._command = list(command)
        self._env = dict(env)
        self.on_line = on_line
        self._name = name
        self.log_extra = dict(log_extra)
        self.exited_by_itself = exited_by_itself
        self._stdin_pipe = stdin_pipe
        self.what = what  # what the logs call it
        self._popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None
        self._exited = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    def spawn(self) -> None:
        # Popen only forks and execs; a worker's slow start happens after.
        self._popen = subprocess.Popen(
            dying_with_us(self._command),
            env=self._env,
            stdin=subprocess.PIPE if self._stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop its children with it
        )
        self.pid = self._popen.pid
        self.started_at = time.monotonic()
        assert self._popen.stdout is not None
        self._tasks = [
            asyncio.create_task(self._relay(self._popen.stdout), name=f"relay-{self._name}"),
            asyncio.create_task(self._reap_until_exit(), name=f"reap-{self._name}"),
        ]

    def send(self, line: str) -> None:
        """One line to its stdin, which is then closed: all it will be told."""
        assert self._popen is not None and self._popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._popen.stdin.write(line.encode() + b"\n")
            self._popen.stdin.close()

    @property
    def alive(self) -> bool:
        return self._popen is not None and self.returncode is None

    @property
    def exited(self) -> asyncio.Event:
        """Set once its exit is reaped."""
        return self._exited

    async def wait_exit(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    async def stop(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace`, reap it all."""
        self._stopping = True
        if self._popen is not None and self._group_alive():
            self._signal_group(signal.SIGTERM)
            if not await self._wait_group_gone(grace):
                log.warning(
                    "%s did not stop within %g s; killing it",
                    self.what,
                    grace,
                    extra=self.log_extra,
                )
                self._signal_group(signal.SIGKILL)
                await self._wait_group_gone(10.0)
        self.close()

    def kill_now(self) -> None:
        """For a forced exit: no waiting, no cleanup beyond the signal."""
        if self._popen is not None:
            self._signal_group(signal.SIGKILL)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._popen is not None:
            for pipe in (self._popen.stdout, self._popen.stdin):
                if pipe is not None:
                    pipe.close()

    # -- the process group -----------------------------------------------------------------

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
        """Collect every exited process of the group that is our child (the leader, and with a
        subreaper also its orphaned children)."""
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
                if not self._stopping and self.exited_by_itself is not None:
                    self.exited_by_itself()
                self._exited.set()

    async def _reap_until_exit(self) -> None:
        # Polling is cheap (a syscall every 100 ms) and cannot race the event loop's own child
        # watcher the way a SIGCHLD handler of ours could.
        while self.returncode is None:
            self._reap()
            if self.returncode is None:
                await asyncio.sleep(0.1)
        level = logging.INFO if self.returncode in (0, -signal.SIGTERM) else logging.WARNING
        log.log(level, "%s exited with code %s", self.what, self.returncode, extra=self.log_extra)
        # Whatever the leader left behind in its group goes with it.
        if self._group_alive():
            self._signal_group(signal.SIGTERM)
            if not await self._wait_group_gone(5.0):
                self._signal_group(signal.SIGKILL)
                await self._wait_group_gone(5.0)

    def _line(self, line: str) -> None:
        self.on_line(line)  # looked up each time: whoever holds the process now

    async def _relay(self, pipe: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            await relay_lines(reader, self._line)
        finally:
            transport.close()
