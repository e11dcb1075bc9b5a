"""HTTP routes of inference-hf: parse, call the serving layer or the model manager, shape the response."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from chat_common.engine_serving import serve_chat
from chat_common.errors import APIError
from chat_common.metrics import metrics_response
from inference_hf.manager import ModelManager
from inference_hf.serving import ChatServing

__all__ = ["router"]

router = APIRouter()


def _serving(request: Request) -> ChatServing:
    return request.app.state.serving  # type: ignore[no-any-return]


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager  # type: ignore[no-any-return]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await serve_chat(request, _serving(request))


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every configured model, loaded or not, with its state (the gateway discovers models here)."""
    return {"object": "list", "data": _manager(request).cards()}


# Ids may hold slashes (hub names such as microsoft/DialoGPT-medium), hence the :path converters.
@router.post("/v1/models/{model_id:path}/load")
async def load_model(request: Request, model_id: str) -> dict[str, Any]:
    manager = _manager(request)
    await manager.load(model_id)
    return manager.card(model_id)


@router.post("/v1/models/{model_id:path}/unload")
async def unload_model(request: Request, model_id: str) -> dict[str, Any]:
    manager = _manager(request)
    await manager.unload(model_id)
    return manager.card(model_id)


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    return _manager(request).card(model_id)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict[str, object]:
    manager = _manager(request)
    status, reason = manager.readiness()
    if status != "ready":
        if status == "failed":
            raise APIError(
                503,
                f"model(s) failed to load: {reason}. Fix the models config or the files and "
                "restart the service, or load them again with POST /v1/models/{id}/load.",
                code="model_load_failed",
            )
        raise APIError(503, reason, code="loading", headers={"Retry-After": "2"})
    loaded = [m for m, s in manager.states.items() if s.status == "loaded"]
    return {"status": "ready", "models": list(manager.states), "loaded": loaded}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return metrics_response(request.app.state.metrics.registry)
