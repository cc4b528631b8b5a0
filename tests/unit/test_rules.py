"""The proxy's rules as plain functions: no sockets, no event loop."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from mlflow_bluegreen.proxy.relay import answers, errors, rules
from mlflow_bluegreen.proxy.relay.rules import Failure, Handover, Outcome

# -- headers ---------------------------------------------------------------------------------


def test_request_headers_drop_hop_by_hop_host_length_expect_and_our_routing_header() -> None:
    head = rules.request_head(
        [
            (b"Host", b"public:8080"),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"3"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Proxy-Connection", b"close"),
            (b"x-hop", b"named by Connection"),
            (b"X-Model-Version", b"7"),
            (b"X-Model-Version", b"8"),
            (b"Expect", b"100-continue"),
            (b"X-Request-Id", b"abc"),
        ]
    )
    assert head.kept == [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"abc")]
    assert head.length == 3
    assert head.version == b"7"  # the first one counts
    assert head.expects_continue and not head.unknown_expectation
    assert not head.framed_otherwise


@pytest.mark.parametrize("name", [b"Transfer-Encoding", b"Upgrade"])
def test_a_request_framed_otherwise_is_marked(name: bytes) -> None:
    head = rules.request_head([(name, b"chunked")])
    assert head.framed_otherwise and head.kept == []


def test_an_expectation_other_than_100_continue_is_unknown() -> None:
    head = rules.request_head([(b"Expect", b"something")])
    assert head.unknown_expectation and not head.expects_continue


def test_connection_may_name_headers_in_several_lines_and_any_case() -> None:
    head = rules.request_head(
        [(b"connection", b"X-A"), (b"X-A", b"1"), (b"CONNECTION", b" x-b ,,"), (b"X-b", b"2")]
    )
    assert head.kept == []
    assert rules.connection_listed([b"a, B", b" ,c"]) == {b"a", b"b", b"c"}


def test_response_headers_drop_hop_by_hop_and_the_workers_version_and_keep_the_length() -> None:
    head = rules.response_head(
        [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"12"),
            (b"Connection", b"close, X-Private"),
            (b"X-Private", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Model-Version", b"old"),
            (b"Set-Cookie", b"a=1"),
        ]
    )
    assert head.kept == [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"12"),
        (b"Set-Cookie", b"a=1"),
    ]
    assert head.length == 12


def test_header_lines_are_written_as_they_came() -> None:
    assert rules.header_lines([(b"A", b"1"), (b"b", b"x y")]) == b"A: 1\r\nb: x y\r\n"
    assert rules.header_lines([]) == b""


def test_every_hop_by_hop_name_is_dropped_both_ways() -> None:
    pairs = [(name.encode(), b"v") for name in rules.HOP_BY_HOP]
    assert rules.request_head(pairs).kept == []
    assert rules.response_head(pairs).kept == []


# -- Expect: 100-continue --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "http11", "sent"),
    [
        (b"100-continue", True, True),
        (b"100-Continue", True, True),
        (b"100-continue", False, False),  # RFC 9110 §10.1.1: HTTP/1.0 sends its body anyway
        (None, True, False),
        (b"something", True, False),
    ],
)
def test_100_continue_is_sent_to_http11_clients_that_ask(
    expect: bytes | None, http11: bool, sent: bool
) -> None:
    head = rules.request_head([(b"Expect", expect)] if expect is not None else [])
    assert rules.send_continue(head, http11) is sent


# -- which path ------------------------------------------------------------------------------


def _path(
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    method: bytes = b"POST",
    target: bytes = b"/invocations",
    head_size: int = 100,
    upgrade: bool = False,
    closing: bool = False,
    max_body_size: int = 64 << 20,
) -> Handover | None:
    head = rules.request_head(headers if headers is not None else [(b"Content-Length", b"3")])
    return rules.handover(
        head,
        method=method,
        target=target,
        head_size=head_size,
        upgrade=upgrade,
        closing=closing,
        max_body_size=max_body_size,
    )


def test_a_small_request_stays_on_the_fast_path() -> None:
    assert _path() is None
    assert _path([]) is None  # no body
    assert _path([(b"Content-Length", str(rules.REPLAYABLE_BODY).encode())]) is None
    assert _path(head_size=rules.HEAD_LIMIT) is None


@pytest.mark.parametrize(
    ("why", "options"),
    [
        (Handover.FRAMING, {"headers": [(b"Transfer-Encoding", b"chunked")]}),
        (Handover.FRAMING, {"headers": [(b"Upgrade", b"websocket")]}),
        (Handover.EXPECTATION, {"headers": [(b"Expect", b"x")]}),
        (Handover.UPGRADE, {"upgrade": True}),
        (Handover.HEAD, {"method": b"HEAD"}),
        (Handover.LARGE_HEAD, {"head_size": rules.HEAD_LIMIT + 1}),
        (Handover.TARGET, {"target": b"http://example.com/invocations"}),
        (Handover.TARGET, {"target": b"*"}),
        (Handover.SHUTTING_DOWN, {"closing": True}),
        (
            Handover.LARGE_BODY,
            {"headers": [(b"Content-Length", str(rules.REPLAYABLE_BODY + 1).encode())]},
        ),
        (Handover.LARGE_BODY, {"max_body_size": 2}),  # aiohttp's side answers the 413
    ],
)
def test_unusual_requests_go_to_aiohttp(why: Handover, options: dict[str, object]) -> None:
    assert _path(**options) is why  # type: ignore[arg-type]


def test_a_head_still_coming_is_too_large_past_the_limit() -> None:
    assert not rules.head_too_large(rules.HEAD_LIMIT)
    assert rules.head_too_large(rules.HEAD_LIMIT + 1)


@pytest.mark.parametrize(
    ("raw", "path_qs", "target"),
    [
        ("/invocations?a=1", "/invocations?a=1", "/invocations?a=1"),
        ("http://h/invocations?a=1", "/invocations?a=1", "/invocations?a=1"),
        ("*", "*", None),
        ("h:443", "", None),
    ],
)
def test_the_worker_is_asked_for_the_path(raw: str, path_qs: str, target: str | None) -> None:
    assert rules.upstream_target(raw, path_qs) == target


def test_refusals_before_the_body_is_read() -> None:
    def refusal(path: str = "/invocations", **kw: object) -> int | None:
        options: dict[str, object] = {"closing": False, "max_body_size": 10, "length": None}
        options.update(kw)
        length = options.pop("length")
        target = options.pop("target", path)
        answer = rules.refusal(path, path, target, length, **options)  # type: ignore[arg-type]
        return answer.status if answer is not None else None

    assert refusal() is None
    assert refusal("/ping", closing=True) == 503
    assert refusal("/invocations", closing=True) is None  # still served while draining
    assert refusal(target=None) == 400
    assert refusal(length=11) == 413
    assert refusal(length=10) is None


# -- which worker ----------------------------------------------------------------------------


@dataclass(eq=False)
class W:
    version: str


@dataclass
class Roles:
    active: W | None = None
    canary: W | None = None
    canary_share: float = 0.0
    lingering: W | None = None


def never() -> float:
    raise AssertionError("no canary: nothing to draw")


def test_without_a_canary_the_active_worker_takes_everything() -> None:
    active = W("1")
    assert rules.route(Roles(active), never) is active
    assert rules.route(Roles(), never) is None


def test_a_canary_takes_its_share_and_everything_when_nothing_else_is_active() -> None:
    active, canary = W("1"), W("2")
    roles = Roles(active, canary, canary_share=0.25)
    assert rules.route(roles, lambda: 0.2) is canary
    assert rules.route(roles, lambda: 0.25) is active
    assert rules.route(roles, lambda: 0.9) is active
    assert rules.route(Roles(None, canary, 0.25), never) is canary


def test_a_pinned_request_goes_to_its_version_or_is_404() -> None:
    active, canary, lingering = W("2"), W("3"), W("1")
    roles = Roles(active, canary, 0.5, lingering)
    for worker in (active, canary, lingering):
        chosen = rules.choose(roles, f" {worker.version} ", path="/x", served=True, draw=never)
        assert chosen is worker
    missing = rules.choose(roles, "9", path="/x", served=True, draw=never)
    assert isinstance(missing, answers.Answer) and missing.status == 404
    body = json.loads(missing.body)
    assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "'9'" in body["message"] and "serving 2 now" in body["message"]
    nothing = rules.choose(Roles(), "9", path="/x", served=True, draw=never)
    assert (
        isinstance(nothing, answers.Answer) and "serving" not in json.loads(nothing.body)["message"]
    )


def test_with_no_worker_a_request_is_held_once_one_has_served() -> None:
    roles = Roles()
    assert rules.choose(roles, None, path="/invocations", served=True, draw=never) is rules.HOLD
    starting = rules.choose(roles, None, path="/invocations", served=False, draw=never)
    assert isinstance(starting, answers.Answer) and starting.status == 503
    for health in ("/ping", "/health"):
        answer = rules.choose(roles, None, path=health, served=True, draw=never)
        assert isinstance(answer, answers.Answer) and answer.status == 503


def test_a_resend_goes_to_the_replacement_unless_pinned_to_another_version() -> None:
    gone, same, other = W("1"), W("1"), W("2")
    assert rules.resend_to(same, gone, None) is same
    assert rules.resend_to(other, gone, None) is other
    assert rules.resend_to(same, gone, "1") is same
    assert rules.resend_to(other, gone, "1") is None
    assert rules.resend_to(None, gone, None) is None


# -- what a failure becomes ------------------------------------------------------------------


def _after(
    failure: Failure,
    *,
    retried: bool = False,
    sent: bool = False,
    replayable: bool = True,
    died: bool | None = None,
    over_limit: bool = False,
) -> Outcome:
    return rules.after_failure(
        failure, retried=retried, sent=sent, replayable=replayable, died=died, over_limit=over_limit
    )


def test_a_stale_connection_is_retried_once_then_the_worker_is_asked_about() -> None:
    assert _after(Failure.STALE) is Outcome.RETRY
    assert _after(Failure.STALE, retried=True) is Outcome.ASK
    assert _after(Failure.STALE, retried=True, died=True) is Outcome.RESEND
    assert _after(Failure.STALE, retried=True, died=False) is Outcome.FAIL


def test_an_answer_cut_before_any_of_it_went_out_goes_to_the_replacement_if_the_worker_died() -> (
    None
):
    assert _after(Failure.CUT) is Outcome.ASK
    assert _after(Failure.CUT, died=True) is Outcome.RESEND
    assert _after(Failure.CUT, died=False) is Outcome.FAIL


def test_nothing_listening_means_the_worker_died() -> None:
    assert _after(Failure.CONNECT) is Outcome.RESEND
    assert _after(Failure.CONNECT, replayable=False) is Outcome.FAIL


@pytest.mark.parametrize("failure", list(Failure))
def test_once_the_answer_head_is_out_the_client_is_cut(failure: Failure) -> None:
    assert _after(failure, sent=True) is Outcome.CUT
    assert _after(failure, sent=True, retried=True, died=True) is Outcome.CUT


@pytest.mark.parametrize("failure", [Failure.STALE, Failure.CUT, Failure.CONNECT])
def test_a_streamed_body_cannot_be_sent_again(failure: Failure) -> None:
    assert _after(failure, replayable=False) is Outcome.FAIL
    assert _after(failure, replayable=False, over_limit=True) is Outcome.TOO_LARGE


def test_a_silent_worker_is_504_and_a_malformed_answer_502() -> None:
    assert _after(Failure.TIMEOUT) is Outcome.TIMEOUT
    assert _after(Failure.TIMEOUT, retried=True) is Outcome.TIMEOUT
    assert _after(Failure.MALFORMED) is Outcome.FAIL


def test_failure_answers_are_mlflow_shaped() -> None:
    timeout = rules.failure_answer(Outcome.TIMEOUT, "x", 10)
    assert (timeout.status, json.loads(timeout.body)["error_code"]) == (504, "DEADLINE_EXCEEDED")
    failed = rules.failure_answer(Outcome.FAIL, "it broke", 10)
    assert failed.status == 502 and "it broke" in json.loads(failed.body)["message"]
    assert dict(failed.headers)["Retry-After"] == answers.RETRY_AFTER_SECONDS
    too_large = rules.failure_answer(Outcome.TOO_LARGE, "x", 10)
    assert too_large.status == 413 and "10 bytes" in json.loads(too_large.body)["message"]


def test_a_worker_is_tallied_by_its_status_a_broken_answer_as_a_502_a_gone_client_not() -> None:
    assert rules.worker_status(200, failed=False) == 200
    assert rules.worker_status(404, failed=False) == 404
    assert rules.worker_status(503, failed=True) == 503
    assert rules.worker_status(200, failed=True) == 502  # cut off after its head went out
    assert rules.worker_status(rules.CLIENT_GONE, failed=False) is None
    assert rules.worker_status(rules.CLIENT_GONE, failed=True) is None


# -- the answer's framing --------------------------------------------------------------------


def test_a_connection_ends_when_the_client_asks_or_the_sidecar_shuts_down() -> None:
    assert not rules.closes_connection(keep_alive=True, shutting_down=False)
    assert rules.closes_connection(keep_alive=False, shutting_down=False)
    assert rules.closes_connection(keep_alive=True, shutting_down=True)


def test_small_answers_of_known_size_are_held_whole() -> None:
    assert rules.hold_whole(0, 200)
    assert rules.hold_whole(rules.REPLAYABLE_BODY, 200)
    assert not rules.hold_whole(rules.REPLAYABLE_BODY + 1, 200)
    assert not rules.hold_whole(None, 200)  # chunked: streamed
    assert not rules.hold_whole(10, 200, head_request=True)
    assert not rules.hold_whole(10, 204)


@pytest.mark.parametrize(
    ("length", "status", "http11", "must_close", "framing"),
    [
        (10, 200, True, False, rules.Framing(False, False, b"")),
        (10, 200, True, True, rules.Framing(False, True, b"Connection: close\r\n")),
        (10, 200, False, False, rules.Framing(False, False, b"Connection: keep-alive\r\n")),
        (None, 200, True, False, rules.Framing(True, False, b"")),
        (None, 200, False, False, rules.Framing(False, True, b"Connection: close\r\n")),
        (None, 204, False, False, rules.Framing(False, False, b"Connection: keep-alive\r\n")),
    ],
)
def test_framing_for_the_client(
    length: int | None, status: int, http11: bool, must_close: bool, framing: rules.Framing
) -> None:
    assert rules.framing(length, status, http11=http11, must_close=must_close) == framing


# -- the sidecar's own answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        (answers.not_ready(), 503, "TEMPORARILY_UNAVAILABLE"),
        (answers.shutting_down(), 503, "TEMPORARILY_UNAVAILABLE"),
        (answers.upstream_timeout(), 504, "DEADLINE_EXCEEDED"),
        (answers.upstream_failed("x"), 502, "TEMPORARILY_UNAVAILABLE"),
        (answers.body_too_large(5), 413, "RESOURCE_LIMIT_EXCEEDED"),
        (answers.body_timeout(), 408, "BAD_REQUEST"),
        (answers.bad_target("*"), 400, "BAD_REQUEST"),
        (answers.version_not_served("9", "1"), 404, "RESOURCE_DOES_NOT_EXIST"),
    ],
)
def test_own_answers_are_data_in_mlflow_shape(
    answer: answers.Answer, status: int, code: str
) -> None:
    assert answer.status == status
    assert dict(answer.headers)["Content-Type"] == "application/json"
    body = json.loads(answer.body)
    assert body["error_code"] == code and body["message"]
    if status in (502, 503):
        assert dict(answer.headers)["Retry-After"] == answers.RETRY_AFTER_SECONDS


def test_both_renderings_of_an_answer_say_the_same() -> None:
    answer = answers.not_ready()
    response = errors.response(answer)
    assert (response.status, response.reason, response.body) == (503, answer.reason, answer.body)
    assert response.headers["Retry-After"] == "5"
    assert response.content_type == "application/json"
    raw = errors.raw(answer, close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Content-Length: %d" % len(answer.body) in lines
    assert b"Connection: close" in lines and b"Retry-After: 5" in lines
    assert body == answer.body
    assert b"Connection: close" not in errors.raw(answer, close=False)
