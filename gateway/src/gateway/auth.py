"""Authentication: the admission layer that checks every request's API key, and the per-model allow-list.

:class:`Authentication` wraps the routes (chat hot path and FastAPI) in ``Gateway.__init__``. With
``GATEWAY_AUTH`` on, every HTTP request but the open paths (:data:`OPEN_PATHS`: liveness, readiness and
metrics probes, and the API documentation, so Swagger UI can load before a key is entered) needs a key,
``Authorization: Bearer sk-...`` or ``x-api-key: sk-...``. The key's record (:class:`ApiKey`) is put in
``scope["state"]["api_key"]`` (``request.state.api_key`` in FastAPI routes); None when auth is off or
the path is open. Refusals are OpenAI's envelope: 401 missing, wrong or expired key, 503 when Redis
cannot be asked (a request is never let through unchecked). A verified key is kept in the process for
``GATEWAY_AUTH_CACHE_S`` (:class:`KeyCache`), so a revoked key is refused within that time. The process
remembers it by the credential header as the client sent it: a client's next request costs a dictionary
lookup, no parsing and no hashing (in this process's memory only; Redis holds nothing but SHA-256 digests).

The allow-list needs the model a request names, which only its route knows: routes call
:func:`allow_model` once they do (the chat hot path after parsing the body).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from chat_common.errors import APIError, error_response
from gateway.api_keys import ApiKey, KeyStore, digest
from gateway.redis_state import REDIS_ERRORS

__all__ = ["OPEN_PATHS", "Authentication", "KeyCache", "allow_model", "api_key_of", "credentials", "secret_of"]

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static-offline-docs/",)  # Swagger UI's and ReDoc's scripts (fastapi-offline)
_AUTHORIZATION = b"authorization"
_X_API_KEY = b"x-api-key"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="switchboard"'}


def api_key_of(scope: Scope) -> ApiKey | None:
    """The request's verified key (None: auth is off, or the path is open)."""
    state: dict[str, Any] = scope.get("state") or {}
    key: ApiKey | None = state.get("api_key")
    return key


def allow_model(scope: Scope, model: str) -> None:
    """403 in OpenAI's envelope unless the request's key may use ``model`` (a model or profile id)."""
    key = api_key_of(scope)
    if key is None or key.allows(model):
        return
    allowed = ", ".join(key.models or ()) or "none"
    raise APIError(
        403,
        f"The API key '{key.name}' ({key.id}) may not use the model '{model}'. It may use: {allowed}. "
        "Ask the operator for a key that allows this model.",
        param="model",
        code="model_not_allowed",
    )


def credentials(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """A request's ``Authorization`` and ``x-api-key`` header values, as sent (None: absent)."""
    authorization = api_key = None
    for name, value in headers:
        if name == _AUTHORIZATION:
            authorization = value
        elif name == _X_API_KEY:
            api_key = value
    return authorization, api_key


def secret_of(authorization: bytes | None, api_key: bytes | None) -> str | None:
    """The key a request sends: ``Authorization: Bearer <key>``, else ``x-api-key: <key>``."""
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key is not None and api_key.strip():
        return api_key.decode("latin-1").strip()
    return None


class KeyCache:
    """Verified keys by the credential that named them, each kept ``ttl_s`` seconds (then Redis is asked again).

    Only keys Redis knows are kept (an unknown secret always reaches Redis, so a new key works at once); a
    revoked key is refused within ``ttl_s``. At most ``max_entries``: when full it starts over, which costs
    a Redis call per key, never a wrong answer. ``ttl_s`` 0 keeps nothing.
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, ApiKey]] = {}

    def get(self, credential: Hashable) -> ApiKey | None:
        entry = self._entries.get(credential)
        if entry is None:
            return None
        if self.clock() >= entry[0]:
            del self._entries[credential]
            return None
        return entry[1]

    def put(self, credential: Hashable, key: ApiKey) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[credential] = (self.clock() + self.ttl_s, key)


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(401, message, code=code, headers=_CHALLENGE)


class Authentication:
    """ASGI layer: checks the API key of every HTTP request (``enabled``), then calls ``app``.

    ``state`` is the FastAPI app's state; its ``api_keys`` (a :class:`KeyStore`, or None without Redis) is
    set by the lifespan, so it is read per request.
    """

    def __init__(self, app: ASGIApp, *, state: State, enabled: bool, cache: KeyCache | None = None) -> None:
        self.app = app
        self.state = state
        self.enabled = enabled
        self.cache = cache or KeyCache(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_state = scope.get("state")
        if request_state is None:
            request_state = scope["state"] = {}
        path: str = scope["path"]
        if not self.enabled or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            request_state["api_key"] = None
            await self.app(scope, receive, send)
            return
        credential = credentials(scope["headers"])
        key = self.cache.get(credential)
        try:
            if key is None:
                key = await self._verify(secret_of(*credential))
                self.cache.put(credential, key)
            if key.expired():
                raise _unauthorized(
                    f"The API key '{key.name}' ({key.id}) has expired. Ask the operator for a new one.",
                    "expired_api_key",
                )
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        request_state["api_key"] = key
        await self.app(scope, receive, send)

    async def _verify(self, secret: str | None) -> ApiKey:
        """The key whose secret this is, from Redis; :class:`APIError` 401 (missing, unknown) or 503."""
        if secret is None:
            raise _unauthorized(
                "Missing API key. Send it as 'Authorization: Bearer sk-...' (or 'x-api-key: sk-...'); the "
                "operator creates keys with `python -m gateway keys create NAME`.",
                "missing_api_key",
            )
        store: KeyStore | None = getattr(self.state, "api_keys", None)
        if store is None:  # the lifespan has not run or there is no Redis: never let the request through
            raise _unavailable("no Redis is configured")
        try:
            key = await store.lookup_digest(digest(secret))
        except REDIS_ERRORS as exc:
            logger.warning("auth: Redis cannot be asked for an API key: %s", exc)
            raise _unavailable(str(exc) or type(exc).__name__) from None
        if key is None:
            raise _unauthorized(
                f"Incorrect API key provided: {_hint(secret)}. Check the key, or ask the operator for one "
                "(`python -m gateway keys list` shows the existing ones).",
                "invalid_api_key",
            )
        return key


def _unavailable(why: str) -> APIError:
    return APIError(
        503,
        f"API keys cannot be checked right now (Redis: {why}). Retry in a moment; if it lasts, the operator "
        "should check that Redis at GATEWAY_REDIS_URL is running.",
        code="auth_unavailable",
        headers={"Retry-After": "1"},
    )


def _hint(secret: str) -> str:
    """A secret as OpenAI shows a wrong one: its first and last characters only."""
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) > 12 else "***"
