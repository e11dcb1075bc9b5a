"""App factory: ``create_app(settings)`` builds the service; the lifespan opens the store onto ``app.state``.

When the store cannot be opened at start (MongoDB not up yet, an unwritable SQLite path), the service still
starts: /health answers, /ready and every store route answer 503 naming the store, and the store is tried again
every ``store_retry_interval_s`` until it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from chat_common.errors import install_error_handlers
from chat_common.middleware import RequestContextMiddleware
from history.config import Settings
from history.metrics import MeteredStore, ServiceMetrics
from history.routes import install_store_errors, router
from history.store import StoreUnavailable, describe_store, open_store

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    metrics = ServiceMetrics(CollectorRegistry())
    description = describe_store(settings)

    async def try_open(app: FastAPI) -> bool:
        try:
            store = await open_store(settings)
        except StoreUnavailable as exc:
            app.state.store_error = StoreUnavailable(
                exc.description,
                exc.reason,
                f"{exc.hint} The service tries again every {settings.store_retry_interval_s:g} s.",
            )
            logger.error("could not open the store", extra={"store": description, "reason": exc.reason})
            return False
        app.state.store = MeteredStore(store, metrics)
        app.state.store_error = None
        metrics.store_open.set(1)
        logger.info("store open", extra={"store": store.description})
        return True

    async def keep_trying(app: FastAPI) -> None:
        while True:
            await asyncio.sleep(settings.store_retry_interval_s)
            if await try_open(app):
                return

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("opening the store", extra={"store": description})
        retry = None if await try_open(app) else asyncio.create_task(keep_trying(app))
        try:
            yield
        finally:
            if retry is not None:
                retry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retry
            if app.state.store is not None:
                await app.state.store.close()
                app.state.store = None

    app = FastAPI(title="Switchboard history", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.store = None
    app.state.store_error = StoreUnavailable(description, "the store is not open yet", "Wait for /ready.")
    install_error_handlers(app)
    install_store_errors(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware)
    return app
