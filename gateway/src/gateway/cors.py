"""CORS for browser frontends: Starlette's ``CORSMiddleware`` around admission and every route, so
preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are answered before authentication (a
browser sends no key with them) and for the chat hot path as for FastAPI's routes. Off (not in the stack
at all) while ``GATEWAY_CORS_ORIGINS`` is empty."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from gateway.config import Settings

__all__ = ["EXPOSED_HEADERS", "with_cors"]

EXPOSED_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "X-Switchboard-Cache",
    "X-Switchboard-History",
    "X-Switchboard-Retrieval",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
]
"""Response headers a browser script may read: request ids, rate limits as OpenAI names them, the cache."""

PREFLIGHT_MAX_AGE_S = 600


def with_cors(app: ASGIApp, settings: Settings) -> ASGIApp:
    """``app`` behind the CORS allow-list, or ``app`` itself when no origin is allowed."""
    if not settings.cors_origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=settings.cors_origins,
        allow_methods=settings.cors_methods,
        allow_headers=settings.cors_headers,
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,  # keys travel in headers, never in cookies
        max_age=PREFLIGHT_MAX_AGE_S,
    )
