"""The unified API's FastAPI routes other than chat: the model list, health, readiness and metrics.

``POST /v1/chat/completions`` is answered in front of FastAPI (:mod:`gateway.chat`); loading and
unloading models is :mod:`gateway.model_admin`; the seed systems' routes are :mod:`gateway.compat`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from chat_common.errors import APIError
from chat_common.metrics import metrics_response
from gateway.proxy import Proxy

__all__ = ["router"]

router = APIRouter()


def _proxy(request: Request) -> Proxy:
    return request.app.state.proxy  # type: ignore[no-any-return]


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    """The services' models, then the configured profiles as virtual models (``owned_by: switchboard-profile``)."""
    return {"object": "list", "data": [*_proxy(request).registry.cards(), *request.app.state.profiles.cards()]}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict[str, object]:
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
        "unreachable": [{"service": r.service, "url": r.url, "error": r.error} for r in registry.unreachable()],
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    proxy = _proxy(request)
    proxy.metrics.models.set(len(proxy.registry.model_ids))
    return metrics_response(proxy.metrics.registry)
