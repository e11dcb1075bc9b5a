"""App factory: ``create_app(settings)`` builds the gateway. Its lifespan opens the pooled HTTP client,
reads every service's /v1/models once, and keeps re-reading them in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx2 as httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from chat_common.errors import install_error_handlers
from chat_common.middleware import RequestContextMiddleware
from gateway.config import Settings
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.registry import Registry
from gateway.routes import router

__all__ = ["create_app"]


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """``transport`` replaces the network for tests (``httpx.MockTransport``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=settings.max_upstream_connections,
                              max_keepalive_connections=settings.max_upstream_connections)
        timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s,
                                write=settings.read_timeout_s, pool=settings.connect_timeout_s)
        async with httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport) as client:
            registry = Registry(settings.services, client, timeout_s=settings.connect_timeout_s)
            app.state.proxy = Proxy(registry, client, GatewayMetrics(CollectorRegistry()), settings.read_timeout_s)
            await registry.refresh()
            refresher = asyncio.create_task(registry.run(settings.refresh_interval_s))
            try:
                yield
            finally:
                refresher.cancel()
                with suppress(asyncio.CancelledError):
                    await refresher

    app = FastAPI(title="Switchboard gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware)
    return app
