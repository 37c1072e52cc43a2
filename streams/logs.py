"""Structured JSON logs, one object per line, with the correlation id of the work at hand.

The correlation id comes from the HTTP ``X-Correlation-Id`` header, or an event's
``correlation_id`` field or ``correlation-id`` Kafka header, and is generated when absent.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
import uuid
from typing import Any, Final

import msgspec

correlation_id: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "correlation_id", default=None
)
HEADER: Final = "correlation-id"
_encode = msgspec.json.Encoder().encode
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def new_correlation_id() -> str:
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            entry["correlation_id"] = cid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _encode(entry).decode("utf-8", "replace")


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
