"""JSON-lines logging: one object a line with ``service`` and the current ``request_id`` on every record.

Every line carries ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``service``, ``logger``,
``message`` and ``request_id``, then the record's ``extra`` fields, then ``exc_info`` / ``stack_info``
when there are any. The gateway writes one access line per request, so the formatter is written for
speed: one ``orjson.dumps`` of a dict built from the record (python-json-logger's formatter took about
three times as long per line, a measurable share of the gateway's CPU per streamed request).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from chat_common.context import request_id

__all__ = ["JsonLinesFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "service",
    "request_id",
}


class JsonLinesFormatter(logging.Formatter):
    """A record as one JSON object (see the module docstring for its fields)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._second = -1
        self._prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger (and uvicorn's) to stdout as JSON lines. Safe to call more than once."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLinesFormatter(service))
    # No record needs the caller's file and line or thread and process names (the JSON lines carry none): the
    # logging HOWTO's "Optimization" switches, which save a frame walk and three lookups per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True
    # Access lines come from RequestContextMiddleware, with request ids and latency.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outgoing request at INFO: the gateway's access line already covers it.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
