"""App factory: ``create_app(settings)`` builds the service. After start, in the background, GGUF sources
are prepared (once) and the preload models loaded, so /health answers at once and /ready turns 200
when they are; a keep-alive task unloads idle models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from chat_common.errors import install_error_handlers
from chat_common.middleware import RequestContextMiddleware
from inference_hf.catalog import load_catalog
from inference_hf.config import Settings
from inference_hf.engine import HFEngine
from inference_hf.manager import ModelManager
from inference_hf.metrics import ServiceMetrics
from inference_hf.routes import router
from inference_hf.serving import ChatServing

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Raises :class:`inference_hf.catalog.CatalogError` when the models config cannot be served."""
    specs = load_catalog(settings)
    metrics = ServiceMetrics(CollectorRegistry())
    engine = HFEngine(max_queue=settings.max_queue, observer=metrics, num_threads=settings.num_threads)
    manager = ModelManager(
        specs,
        engine,
        cache_dir=settings.models_cache_dir,
        max_loaded=settings.max_loaded_models,
        keep_alive_s=settings.keep_alive_s,
        max_batch_size=settings.max_batch_size,
        auto_8bit_above_bytes=settings.auto_8bit_above_gb * 1e9,
        retry_after_s=settings.retry_after_s,
        observer=metrics,
    )
    serving = ChatServing(engine, manager, metrics, settings.retry_after_s, settings.default_max_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        tasks = [
            asyncio.create_task(manager.start()),
            asyncio.create_task(manager.run_keep_alive(settings.idle_check_interval_s)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="Switchboard inference-hf", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.manager = manager
    app.state.serving = serving
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware)
    return app
