"""A child process's output, relayed line by line into the sidecar's log."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

# One line may be this long; a longer one is relayed in pieces rather than breaking the relay.
LINE_LIMIT = 1 << 20


async def relay_lines(reader: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Call `on_line` with every non-empty line of `reader`, until it ends."""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # one line over the limit: relay it in pieces
            line = await reader.read(1 << 16)
        if not line:
            return
        text = line.decode(errors="replace").rstrip()
        if text:
            on_line(text)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b(: .+)?$")


def first_exception(lines: list[str]) -> str | None:
    """The first `SomeError: message` line of a worker's output: the root cause, which MLflow's
    own wrapper traceback ("Command ... returned non zero return code") follows and hides."""
    for line in lines:
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None
