"""Open-loop load: a fixed arrival rate, every request recorded, run in a child process.

Request i is due at t0 + i/rate whatever happened to the earlier ones, and its latency counts
from that scheduled moment, so a stall shows in full instead of being hidden by coordinated
omission (a closed-loop client would simply send less while the server stalls).

The generator runs as a child process (`python benchmarks/openloop.py URL ...`) so that the
orchestrator's blocking registry and /status calls can never delay a send. Both processes use
CLOCK_MONOTONIC, which is system-wide, so times compare across them.

A record is [index, scheduled_s, send_lag_s, latency_s, status, version, error]; scheduled_s is
seconds since t0, latency counts from the scheduled time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Record = list[Any]
INDEX, SCHEDULED, SEND_LAG, LATENCY, STATUS, VERSION, ERROR = range(7)


async def open_loop(
    url: str,
    rate: float,
    max_outstanding: int,
    timeout: float,
    max_seconds: float,
    *,
    body_for: Callable[[int], bytes] | None = None,
    label_for: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """Fixed arrival rate until stdin closes or `max_seconds` pass; returns t0 and the records.
    Request `index` sends `body_for(index)` (default: the iris rows); with `label_for`, its
    record ends with that label."""
    import aiohttp

    from mlflow_bluegreen.proxy.loadgen import IRIS_PAYLOAD, VERSION_HEADER

    body_of = body_for or (lambda _index: IRIS_PAYLOAD)

    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"loopback targets only, not {url}")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    # Bounded, so a dead target cannot make us open sockets without limit; a request that has to
    # wait for a slot still counts its latency from its scheduled time.
    slots = asyncio.Semaphore(max_outstanding)
    records: list[Record] = []
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=max_outstanding)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    interval = 1.0 / rate
    t0 = time.monotonic() + 0.2

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one(index: int, due: float) -> None:
            body = body_of(index)
            async with slots:
                sent = time.monotonic()
                status = version = error = None
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status, version = response.status, response.headers.get(VERSION_HEADER)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"[:160]
                done = time.monotonic()
            record = [index, due - t0, sent - due, done - due, status, version, error]
            if label_for is not None:
                record.append(label_for(index))
            records.append(record)

        print(json.dumps({"t0": t0}), flush=True)
        tasks: set[asyncio.Task[None]] = set()
        index = 0
        while not stop.is_set() and index * interval < max_seconds:
            due = t0 + index * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(index, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 5)
    records.sort()
    return {"t0": t0, "rate": rate, "records": records}


class LoadChild:
    """The generator as a child process. `t0` is its CLOCK_MONOTONIC start; stop() closes its
    stdin, waits, and returns the records (scheduled times already relative to t0).
    `program` is the script (and its first arguments) the child runs."""

    program: tuple[str, ...] = (__file__,)

    def __init__(
        self,
        url: str,
        *,
        rate: float,
        max_outstanding: int = 256,
        timeout: float = 30.0,
        max_seconds: float = 900.0,
    ) -> None:
        self.timeout = timeout
        fd, name = tempfile.mkstemp(prefix="bench-loadgen-", suffix=".json")
        os.close(fd)
        self.out = Path(name)
        command = [
            sys.executable, *self.program, url,
            "--rate", str(rate),
            "--max-outstanding", str(max_outstanding),
            "--timeout", str(timeout),
            "--max-seconds", str(max_seconds),
            "--out", str(self.out),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited with {self.process.wait()}")
        self.t0 = float(json.loads(line)["t0"])

    def now(self) -> float:
        """Seconds since the load began, on the generator's timeline."""
        return time.monotonic() - self.t0

    def stop(self) -> list[Record]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            # Outstanding requests may take up to their timeout; then the child gives up on them.
            self.process.wait(self.timeout + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        if self.process.returncode != 0:
            raise RuntimeError(f"load generator exited with {self.process.returncode}")
        try:
            return list(json.loads(self.out.read_text())["records"])
        finally:
            self.out.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--max-outstanding", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from mlflow_bluegreen.proxy.cli import run_with_uvloop

    result = run_with_uvloop(
        open_loop(args.url, args.rate, args.max_outstanding, args.timeout, args.max_seconds)
    )
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
