"""The sidecar's own answers (answers.Answer) written out: as aiohttp responses, or as the bytes
the fast path sends. What they say is decided in rules.py."""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import web

from . import answers


def response(answer: answers.Answer) -> web.Response:
    """For aiohttp's side of the public port, and the admin port."""
    return web.Response(
        status=answer.status, reason=answer.reason, headers=answer.headers, body=answer.body
    )


def mlflow_error(status: int, error_code: str, message: str, **headers: str) -> web.Response:
    """A JSON body `{"error_code": ..., "message": ...}` as the scoring server writes its own."""
    return response(answers.mlflow_error(status, error_code, message, **headers))


def raw(answer: answers.Answer, close: bool) -> bytes:
    """For the fast path: the same status line, headers and body as aiohttp writes them."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (answer.status, answer.reason.encode())]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in answer.headers)
    lines.append(b"Content-Length: %d\r\nDate: %s\r\n" % (len(answer.body), http_date()))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(answer.body)
    return b"".join(lines)


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]
