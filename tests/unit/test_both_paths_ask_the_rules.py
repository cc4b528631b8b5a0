"""Both ways of relaying decide by rules.py, not by rules of their own: each asks the same
functions, so a change there changes both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from mlflow_bluegreen.proxy.relay import rules

from .proxying import Proxy

FRAMINGS = {
    "fast path": b"Content-Length: 3\r\n\r\n1,2",
    "aiohttp path": b"Transfer-Encoding: chunked\r\n\r\n3\r\n1,2\r\n0\r\n\r\n",
}
ASKED = ("request_head", "response_head", "hold_whole", "route", "worker_status")


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_each_path_asks_the_rules(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, framing: bytes
) -> None:
    asked: list[str] = []

    def spy(name: str, rule: Callable[..., Any]) -> Callable[..., Any]:
        def asking(*args: Any, **kwargs: Any) -> Any:
            asked.append(name)
            return rule(*args, **kwargs)

        return asking

    for name in ASKED:
        monkeypatch.setattr(rules, name, spy(name, getattr(rules, name)))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + framing)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert set(asked) == set(ASKED)


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_a_changed_rule_changes_both_paths(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, framing: bytes
) -> None:
    monkeypatch.setattr(rules, "_NOT_RELAYED", rules._NOT_RELAYED | {b"x-upstream"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + framing)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200") and b"x-model-version: 7" in head
    assert b"x-upstream" not in head  # echo sends it; neither path relays it now
