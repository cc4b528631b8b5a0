"""The proxy's connections to its workers, in one place: per worker, the aiohttp sessions of
aiohttp's side of the public port and the raw keep-alive pool of the fast path.

A worker's pools are made on its first request and closed when it stops (`worker_stopped`,
told by the supervisor's observer). Should that call not come, pools of workers the supervisor
no longer runs are dropped whenever a new worker's are made, so nothing leaks either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator

import aiohttp
from yarl import URL

from ...worker.control.worker import Worker
from .upstream import CONNECT_TIMEOUT, POOL_KEEPALIVE, UpstreamPool

log = logging.getLogger(__name__)

CONNECTIONS = 100  # per worker, on aiohttp's side

# On aiohttp's side: the connection closed before any response byte, so the worker never
# handled the request (a pooled keep-alive connection it had just closed).
STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def client_session(
    read_timeout: float, limit: int, *, fresh: bool = False
) -> aiohttp.ClientSession:
    """aiohttp's connections to one worker. `fresh` never reuses a connection: for the one
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
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout
        ),
    )


class WorkerPools:
    """The connections to one worker."""

    def __init__(self, base_url: str, read_timeout: float, limit: int) -> None:
        url = URL(base_url)
        assert url.host is not None and url.port is not None
        self.base_url = base_url
        self.raw = UpstreamPool(url.host, url.port)
        self._read_timeout = read_timeout
        self._limit = limit
        self._sessions: tuple[aiohttp.ClientSession, aiohttp.ClientSession] | None = None

    @property
    def sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        """(pooled, fresh): the first try, and the one retry on a connection of its own. Made
        on first use: most workers are only ever reached by the fast path."""
        if self._sessions is None:
            self._sessions = (
                client_session(self._read_timeout, self._limit),
                client_session(self._read_timeout, self._limit, fresh=True),
            )
        return self._sessions

    async def close(self) -> None:
        self.raw.close()
        sessions, self._sessions = self._sessions, None
        for session in sessions or ():
            await session.close()


class Pools:
    """Every worker's pools. `live` lists the workers the supervisor runs."""

    def __init__(
        self,
        read_timeout: float,
        live: Callable[[], Iterable[Worker]] = tuple,
        *,
        limit: int = CONNECTIONS,
    ) -> None:
        # The worker answers 504 itself after its own timeout; this only catches one that hangs.
        self.read_timeout = read_timeout
        self._live = live
        self._limit = limit
        self._pools: dict[Worker, WorkerPools] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def for_worker(self, worker: Worker) -> WorkerPools:
        pools = self._pools.get(worker)
        if pools is None:
            self._forget_gone()
            pools = self._pools[worker] = WorkerPools(
                worker.base_url, self.read_timeout, self._limit
            )
        return pools

    def raw(self, worker: Worker) -> UpstreamPool:
        pools = self._pools.get(worker)  # as for_worker, one call less per request
        return (pools if pools is not None else self.for_worker(worker)).raw

    def worker_stopped(self, worker: Worker) -> None:
        """The worker is gone: close its connections."""
        pools = self._pools.pop(worker, None)
        if pools is not None:
            self._close_later(pools)

    def __len__(self) -> int:
        return len(self._pools)

    def __iter__(self) -> Iterator[WorkerPools]:
        return iter(list(self._pools.values()))

    def _forget_gone(self) -> None:
        """A new worker: drop pools of those the supervisor no longer runs and nothing uses."""
        live = set(map(id, self._live()))
        for worker, pools in list(self._pools.items()):
            if id(worker) not in live and pools.raw.open <= 0 and worker.in_flight.count <= 0:
                del self._pools[worker]
                self._close_later(pools)

    def _close_later(self, pools: WorkerPools) -> None:
        try:
            task = asyncio.get_running_loop().create_task(pools.close())
        except RuntimeError:  # no loop: nothing was ever opened on one
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for each in pools:
            await each.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
