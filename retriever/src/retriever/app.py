"""App factory: ``create_app(settings)`` builds the service; the lifespan loads the embedders and opens the
collections on a thread, so /health answers at once and /ready turns 200 when everything is loaded.

While it runs, changed FAISS index files are written every ``index_flush_interval_s`` and once more at shutdown;
a read replica (``read_only``) writes none and follows the writer's files instead (:mod:`retriever.follower`).
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
from retriever.config import Settings
from retriever.embedder import Embedder
from retriever.follower import Follower
from retriever.metrics import ServiceMetrics
from retriever.routes import router
from retriever.serving import RetrieverService

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, embedders: dict[str, Embedder] | None = None) -> FastAPI:
    """``embedders``: models already loaded, by id, to use instead of loading them again (tests)."""
    service = RetrieverService(settings, ServiceMetrics(CollectorRegistry()), embedders)

    async def load() -> None:
        try:
            await asyncio.to_thread(service.load)
        except Exception as exc:
            logger.exception("the retriever failed to load")
            service.load_errors["startup"] = f"{type(exc).__name__}: {exc}"

    async def flush_now_and_then() -> None:
        while True:
            await asyncio.sleep(settings.index_flush_interval_s)
            try:
                await asyncio.to_thread(service.flush)
            except Exception:
                logger.exception("writing index files failed; will try again")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load())
        # A writer writes its changed index files now and then; a read replica follows the writer's files.
        if settings.read_only:
            background = asyncio.create_task(Follower(service).run(settings.reload_interval_s))
        else:
            background = asyncio.create_task(flush_now_and_then())
        app.state.loader = loader
        try:
            yield
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            await loader  # a load in progress finishes first: its thread cannot be interrupted
            await service.close()

    app = FastAPI(title="Switchboard retriever", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware)
    return app
