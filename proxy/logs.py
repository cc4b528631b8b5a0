"""Log setup: readable text for a terminal, one JSON object a line for a log pipeline."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_CONTEXT = ("slot", "version")


class TextFormatter(logging.Formatter):
    """Adds `[slot vN]` to the lines a worker wrote, so two workers' output can be told apart."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        slot = getattr(record, "slot", None)
        if slot is None:
            return line
        prefix = f"{record.levelname:<7} {record.name}: "
        return line.replace(prefix, f"{prefix}[{slot} v{getattr(record, 'version', '?')}] ", 1)


def setup_logging(fmt: str = "text", level: str = "INFO", access_log: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # MLflow's and aiohttp's own chatter at INFO is not ours to repeat.
    for noisy in ("mlflow", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if access_log else logging.WARNING)
