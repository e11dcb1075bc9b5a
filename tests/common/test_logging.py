from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest

from chat_common import context
from chat_common.logging import configure_logging


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Configure logging as a service does, into a buffer; restore the root logger afterwards."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stdout", out)
    configure_logging("svc", "DEBUG")
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_carries_the_fixed_fields_then_the_extras_in_order(log_lines: io.StringIO) -> None:
    token = context._request_id.set("req-7")
    try:
        logging.getLogger("access").info("request %s", "done", extra={"route": "/x", "status": 200, "z": 1.5})
    finally:
        context._request_id.reset(token)
    [line] = _lines(log_lines)
    assert list(line) == ["ts", "level", "service", "logger", "message", "request_id", "route", "status", "z"]
    assert line["level"] == "INFO" and line["service"] == "svc" and line["logger"] == "access"
    assert line["message"] == "request done" and line["request_id"] == "req-7"
    assert (line["route"], line["status"], line["z"]) == ("/x", 200, 1.5)
    assert isinstance(line["ts"], str) and line["ts"].endswith("Z") and line["ts"][10] == "T"
    assert len(line["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_exceptions_and_unserialisable_values_still_make_one_json_line(log_lines: io.StringIO) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"thing": Opaque(), "request_id": "given"})
    [line] = _lines(log_lines)
    assert line["thing"] == "opaque!"
    assert line["request_id"] == "given"  # an explicit id wins over the context's (none here)
    assert "ValueError: bad thing" in str(line["exc_info"])


def test_outside_a_request_the_request_id_is_null(log_lines: io.StringIO) -> None:
    logging.getLogger("x").warning("no request")
    assert _lines(log_lines)[0]["request_id"] is None
