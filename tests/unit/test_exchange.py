"""A fast-path request's state lives in its Exchange, made per request."""

from __future__ import annotations

from typing import Any

from mlflow_bluegreen.proxy.relay.exchange import Exchange


def test_an_exchange_names_its_state() -> None:
    client: Any = None
    exchange = Exchange(client)
    assert exchange.state == "reading" and exchange.status == 499  # until it is answered
    exchange.method, exchange.url, exchange.complete = b"POST", b"/invocations", True
    assert exchange.state == "complete"
    exchange.started = 1.0
    assert exchange.state == "dispatched"
    exchange.head_sent = True
    assert repr(exchange) == "<Exchange POST b'/invocations' answering 499>"


def test_each_request_starts_from_nothing() -> None:
    client: Any = None
    first, second = Exchange(client), Exchange(client)
    first.headers.append((b"A", b"1"))
    first.body.append(b"x")
    first.out.append(b"y")
    assert (second.headers, second.body, second.out) == ([], [], [])
    assert not (second.head_sent or second.holding or second.chunked or second.close_after)
