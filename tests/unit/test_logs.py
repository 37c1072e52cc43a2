from __future__ import annotations

import json
import logging

from streams.logs import JsonFormatter, correlation_id


def record(message: str, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("atp.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_log_lines_are_json_with_the_correlation_id_and_extra_fields() -> None:
    token = correlation_id.set("abc-123")
    try:
        line = JsonFormatter().format(record("dead-lettered", source_offset=7))
    finally:
        correlation_id.reset(token)
    entry = json.loads(line)
    assert entry["message"] == "dead-lettered"
    assert entry["level"] == "warning"
    assert entry["correlation_id"] == "abc-123"
    assert entry["source_offset"] == 7
    assert entry["ts"].endswith("Z")


def test_without_a_correlation_id_none_is_invented_in_the_log() -> None:
    entry = json.loads(JsonFormatter().format(record("plain")))
    assert "correlation_id" not in entry
