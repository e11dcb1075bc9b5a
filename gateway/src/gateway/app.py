"""App factories: ``Gateway(settings)`` is the ASGI app the gateway serves, ``create_app(settings)`` its
FastAPI part, whose lifespan opens the pooled upstream HTTP client, reads every service's /v1/models
once, and keeps re-reading them in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiohttp
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from chat_common.errors import install_error_handlers
from chat_common.middleware import RequestContextMiddleware
from gateway.answer import AnswerFilter
from gateway.cache import ResponseCache
from gateway.chat import ChatRoutes
from gateway.compat import ROUTERS as COMPAT_ROUTERS
from gateway.config import Settings
from gateway.discovery import make_resolver
from gateway.history import HistoryClient
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.model_admin import router as model_admin_router
from gateway.profiles import load_profiles
from gateway.proxy import Proxy
from gateway.registry import Registry
from gateway.retrieval import RetrieverClient
from gateway.routes import router

__all__ = ["Gateway", "create_app"]


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app of every route but the chat hot path; serve it through :class:`Gateway`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Idle connections are dropped before the services' own keep-alive timeout (uvicorn: 5 s) ends them.
        connector = aiohttp.TCPConnector(limit=settings.max_upstream_connections, limit_per_host=0, keepalive_timeout=4)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as client:
            resolver = make_resolver(settings.dns_nameservers)
            registry = Registry(
                settings.services,
                client,
                timeout_s=settings.connect_timeout_s,
                resolver=resolver,
                breaker_threshold=settings.breaker_threshold,
                breaker_cooldown_s=settings.breaker_cooldown_s,
            )
            app.state.history = HistoryClient(settings.history_url, client) if settings.history_url else None
            app.state.retriever = (
                RetrieverClient(settings.retriever_url, client, timeout_s=settings.retriever_timeout_s)
                if settings.retriever_url
                else None
            )
            app.state.proxy = Proxy(registry, client, GatewayMetrics(CollectorRegistry()), settings.read_timeout_s)
            await registry.refresh()
            refresher = asyncio.create_task(registry.run(settings.refresh_interval_s))
            try:
                yield
            finally:
                refresher.cancel()
                with suppress(asyncio.CancelledError):
                    await refresher
                await resolver.close()
                app.state.limiter.close()

    # /docs and /redoc load their scripts from the gateway itself (fastapi-offline ships them): no CDN.
    app = FastAPIOffline(title="Switchboard gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.profiles = load_profiles(settings.profiles_file)  # ProfileFileError: the gateway does not start
    # Every chat answer passes through these, in order (gateway.answer.model_answer); none by default.
    answer_filters: list[AnswerFilter] = []
    app.state.answer_filters = answer_filters
    # Rate limits (gateway.limits) and the response cache (gateway.cache), in the Redis of app.state.redis.
    app.state.cache = ResponseCache(ttl_s=settings.cache_ttl_s, max_entry_bytes=settings.cache_max_entry_bytes)
    app.state.limiter = Limiter(
        settings.rate_limits, anonymous=settings.rate_limit_anonymous, failure=settings.redis_failure
    )
    install_error_handlers(app)
    app.include_router(router)
    for compat_router in COMPAT_ROUTERS:
        app.include_router(compat_router)
    app.include_router(model_admin_router)
    return app


class Gateway:
    """The ASGI app the gateway serves: request ids and access lines around everything, the chat hot
    path (:class:`gateway.chat.ChatRoutes`) answered first, and the FastAPI app for the rest.

    FastAPI's own per-request layers (telemetry probes, body-limit and exception middleware, routing,
    dependency solving) cost about a third of the streaming throughput, so chat requests skip them.
    ``api`` is the FastAPI app: its lifespan starts the upstream client and its ``state`` holds it.

    The stack, outermost first: request context (request id, access line), then the routes (chat hot
    path, then FastAPI). Admission (authentication, rate limits) belongs between the two, as one ASGI
    layer wrapped around ``routes`` below: every request then passes it, chat or not, before any body
    is read, and a refusal it renders still carries the request id and gets its access line.
    """

    def __init__(self, settings: Settings) -> None:
        self.api = create_app(settings)
        routes = ChatRoutes(self.api, state=self.api.state)
        self._stack = RequestContextMiddleware(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)
