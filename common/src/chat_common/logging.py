"""JSON-lines logging: one object a line with ``service`` and the current ``request_id`` on every record."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.orjson import OrjsonFormatter

from chat_common.context import request_id

__all__ = ["configure_logging"]


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not hasattr(record, "request_id"):
            record.request_id = request_id()
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger (and uvicorn's) to stdout as JSON lines. Safe to call more than once."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        OrjsonFormatter(
            "%(asctime)s %(levelname)s %(service)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter(service))
    # No record needs the caller's file and line or thread and process names (the JSON lines carry none): the
    # logging HOWTO's "Optimization" switches, which save a frame walk and three lookups per record.
    logging._srcfile = None  # type: ignore[attr-defined]
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
