"""App factory: ``create_app(settings)`` builds the service; models load in the background after start,
so /health answers at once and /ready turns 200 when every model is loaded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from chat_common.errors import install_error_handlers
from chat_common.middleware import RequestContextMiddleware
from inference_gguf.catalog import discover_models
from inference_gguf.config import Settings
from inference_gguf.engine import LlamaEngine
from inference_gguf.metrics import GgufMetrics
from inference_gguf.routes import router
from inference_gguf.serving import ChatServing

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Raises :class:`inference_gguf.catalog.CatalogError` when there is nothing to serve."""
    specs = discover_models(settings)
    metrics = GgufMetrics(CollectorRegistry())
    engines = {
        spec.id: LlamaEngine(
            spec.id,
            spec.path,
            n_ctx=settings.n_ctx if spec.n_ctx is None else spec.n_ctx,
            n_threads=settings.n_threads,
            n_batch=settings.n_batch,
            n_gpu_layers=settings.n_gpu_layers,
            flash_attn=settings.flash_attn,
            max_queue=settings.max_queue,
            n_slots=settings.n_slots,
            cpu_repack=settings.cpu_repack,
            observer=metrics,
            verbose=settings.llama_verbose,
        )
        for spec in specs
    }
    serving = ChatServing(
        engines, {s.id: s.defaults for s in specs}, metrics, settings.retry_after_s, settings.default_max_tokens
    )

    async def load_all(app: FastAPI) -> None:
        for model_id, engine in engines.items():
            try:
                await asyncio.to_thread(engine.load)
                metrics.loaded.labels(model_id).set(1)
                metrics.slots.labels(model_id).set(engine.n_slots)
            except Exception as exc:
                logger.exception("model failed to load", extra={"model": model_id})
                app.state.load_errors[model_id] = str(exc) or type(exc).__name__

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(load_all(app))
        try:
            yield
        finally:
            loader.cancel()
            for engine in engines.values():
                await asyncio.to_thread(engine.close)

    app = FastAPI(title="Switchboard inference-gguf", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.serving = serving
    app.state.metrics = metrics
    app.state.load_errors = {}
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware)
    return app
