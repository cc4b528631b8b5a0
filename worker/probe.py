"""A worker's scoring server, asked over HTTP whether it is up and whether it scores its own
input example. The proxy's traffic never goes through here: probes have a small pool of
their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

# Between two pings of a server that is not up yet: a refused connection costs nothing, and the
# swap's `ready` step is only as exact as this.
POLL = 0.05


class ProbeFailed(Exception):
    """The server did not answer as a probe needs; the message says how."""


class Probe:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def ping(self, timeout: float = 2.0) -> bool:
        """One `GET /ping`: True on 200 within `timeout`."""
        try:
            async with self._pool().get(
                f"{self.base_url}/ping", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_ready(
        self, timeout: float, exited: asyncio.Event, exit_code: Callable[[], int | None]
    ) -> None:
        """Return once `GET /ping` answers 200; ProbeFailed if the process exits first (`exited`
        is set) or `timeout` seconds pass."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if exited.is_set():
                raise ProbeFailed(f"exited with code {exit_code()} before ready")
            if asyncio.get_running_loop().time() > deadline:
                raise ProbeFailed(f"not ready after {timeout:g} s")
            if await self.ping():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await exited.wait()

    async def score(self, payload: str, timeout: float) -> None:
        """POST `payload` (JSON) to /invocations; ProbeFailed unless it answers 2xx."""
        try:
            async with self._pool().post(
                f"{self.base_url}/invocations",
                data=payload.encode(),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ProbeFailed(f"request failed: {error!r}") from error
        if not 200 <= response.status < 300:
            text = body[:300].decode(errors="replace")
            raise ProbeFailed(f"answered {response.status}: {text}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
