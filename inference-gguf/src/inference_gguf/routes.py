"""HTTP routes of inference-gguf: parse, call the serving layer, shape the response."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from chat_common.answer_filter import FILTER_FIELD, FILTER_VERSION
from chat_common.engine_serving import serve_chat
from chat_common.errors import APIError
from chat_common.metrics import metrics_response
from chat_common.protocol import ModelCard, ModelList
from inference_gguf.serving import ChatServing

__all__ = ["router"]

router = APIRouter()

SERVICE = "inference-gguf"


def _serving(request: Request) -> ChatServing:
    return request.app.state.serving  # type: ignore[no-any-return]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await serve_chat(request, _serving(request))


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    cards = []
    for model_id, engine in _serving(request).engines.items():
        cards.append(
            ModelCard.model_validate(
                {
                    "id": model_id,
                    "owned_by": SERVICE,
                    "context_length": engine.n_ctx if engine.loaded else None,
                    "loaded": engine.loaded,
                    FILTER_FIELD: FILTER_VERSION,  # applies a pushed-down answer filter
                }
            )
        )
    return ModelList(data=cards)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict[str, object]:
    serving = _serving(request)
    errors: dict[str, str] = request.app.state.load_errors
    if errors:
        detail = "; ".join(f"'{m}': {e}" for m, e in errors.items())
        raise APIError(
            503,
            f"model(s) failed to load: {detail}. Fix the file or the models config and restart the service.",
            code="model_load_failed",
        )
    loading = [m for m, e in serving.engines.items() if not e.loaded]
    if loading:
        raise APIError(503, f"loading model(s): {', '.join(loading)}", code="loading", headers={"Retry-After": "2"})
    return {"status": "ready", "models": sorted(serving.engines)}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return metrics_response(request.app.state.metrics.registry)
