"""The unified API's FastAPI routes other than chat: models, embeddings, health, readiness and metrics.

``POST /v1/chat/completions`` is answered in front of FastAPI (:mod:`gateway.chat`); loading and
unloading models is :mod:`gateway.model_admin`; the seed systems' routes are :mod:`gateway.compat`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from redis.asyncio import Redis
from starlette.responses import Response

from chat_common.errors import APIError
from chat_common.metrics import metrics_response
from chat_common.requests import json_object
from gateway.auth import allow_model
from gateway.proxy import Proxy
from gateway.redis_state import REDIS_ERRORS
from gateway.retrieval import RetrieverClient, RetrieverUnavailable

__all__ = ["router"]

router = APIRouter()
READY_REDIS_TIMEOUT_S = 0.5  # well inside a readiness probe's usual 1 s


def _proxy(request: Request) -> Proxy:
    return request.app.state.proxy  # type: ignore[no-any-return]


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    """The services' models, then the configured profiles as virtual models (``owned_by: switchboard-profile``)."""
    return {"object": "list", "data": [*_proxy(request).registry.cards(), *request.app.state.profiles.cards()]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    """One model's card (the SDK's ``models.retrieve``); 404 listing the available models otherwise."""
    allow_model(request.scope, model)
    proxy = _proxy(request)
    await proxy.route(model)  # re-reads the services once when the model is unknown; 404 if still unknown
    card = proxy.registry.card(model)
    if card is None:  # routable but gone from the listing since: as unknown
        raise APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
    return card


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    """OpenAI's embeddings, answered by the retriever's embedders (its ``/v1/embeddings``)."""
    retriever: RetrieverClient | None = request.app.state.retriever
    body = json_object(await request.body(), "with 'input' (and optionally 'model')")
    if isinstance(body.get("model"), str):
        allow_model(request.scope, body["model"])
    if retriever is None:
        raise APIError(
            400,
            "This gateway has no retriever (GATEWAY_RETRIEVER_URL is empty), which computes embeddings.",
            code="embeddings_disabled",
        )
    try:
        return await retriever.embeddings(body)
    except RetrieverUnavailable as exc:
        raise APIError(
            503,
            f"The retriever service, which computes embeddings, is unavailable ({exc}). Retry later.",
            code="retriever_unavailable",
            headers={"Retry-After": "2"},
        ) from exc


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict[str, object]:
    """200 once a model is routable. ``redis`` says whether the shared state answers; it does not fail
    readiness (every replica shares that Redis: taking them all out of service for it would turn a Redis
    outage into a full one, where API keys already verified, and limits with GATEWAY_REDIS_FAILURE=open,
    keep answering)."""
    registry = _proxy(request).registry
    if not registry.model_ids:
        down = "; ".join(f"{r.service} at {r.url}: {r.error}" for r in registry.unreachable()) or "none listed"
        raise APIError(
            503,
            f"No model is routable yet. Unreachable services: {down}.",
            code="no_models",
            headers={"Retry-After": "2"},
        )
    return {
        "status": "ready",
        "models": registry.model_ids,
        "redis": await redis_status(request.app.state.redis),
        "unreachable": [{"service": r.service, "url": r.url, "error": r.error} for r in registry.unreachable()],
        "tripped": [
            {
                "service": r.service,
                "url": r.url,
                "state": r.breaker.state,
                "retry_in_s": round(r.breaker.retry_in_s(), 1),
            }
            for r in registry.tripped()
        ],
    }


async def redis_status(redis: Redis | None) -> str:
    """``ok``, ``unreachable: <why>``, or ``not configured``: one PING, answered within half a second."""
    if redis is None:
        return "not configured"
    try:
        async with asyncio.timeout(READY_REDIS_TIMEOUT_S):
            await redis.ping()
    except TimeoutError:
        return f"unreachable: no answer within {READY_REDIS_TIMEOUT_S:g}s"
    except REDIS_ERRORS as exc:
        return f"unreachable: {exc or type(exc).__name__}"
    return "ok"


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    proxy = _proxy(request)
    proxy.metrics.models.set(len(proxy.registry.model_ids))
    return metrics_response(proxy.metrics.registry)
