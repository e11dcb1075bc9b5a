"""Per-request context: the request id and extra fields for the access log line.

Both live in context variables so that any layer (routes, serving, an outgoing HTTP call) can read the
request id without passing it around, and the JSON log formatter can stamp it on every line.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from typing import Any, TypeGuard

__all__ = ["REQUEST_ID_HEADER", "access_fields", "new_request_id", "request_id", "valid_request_id"]

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_access_fields: ContextVar[dict[str, Any] | None] = ContextVar("access_fields", default=None)


def new_request_id() -> str:
    """32 random hex digits (a UUID4's worth of randomness, without building a UUID object per request)."""
    return os.urandom(16).hex()


def valid_request_id(value: str | None) -> TypeGuard[str]:
    return bool(value) and _VALID_ID.match(value or "") is not None


def request_id() -> str | None:
    """The id of the request being handled, or ``None`` outside a request."""
    return _request_id.get()


def access_fields() -> dict[str, Any]:
    """Mutable fields (``model``, ...) added to this request's access log line; a throwaway dict outside one."""
    fields = _access_fields.get()
    return fields if fields is not None else {}
