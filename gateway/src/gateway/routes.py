"""HTTP routes of the gateway: the unified OpenAI-compatible API, health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from chat_common.errors import APIError
from chat_common.metrics import metrics_response
from chat_common.requests import parse_chat_request
from gateway.proxy import Proxy

__all__ = ["router"]

router = APIRouter()


def _proxy(request: Request) -> Proxy:
    return request.app.state.proxy  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES).",
                    code="request_too_large")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    proxy = _proxy(request)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    chat = parse_chat_request(body)
    response = await proxy.forward(chat.model, "/v1/chat/completions", body, stream=chat.stream,
                                   disconnected=lambda: _disconnected(request))
    proxy.metrics.requests.labels(chat.model, str(response.status_code)).inc()
    return response


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    return {"object": "list", "data": _proxy(request).registry.cards()}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict[str, object]:
    registry = _proxy(request).registry
    if not registry.model_ids:
        down = "; ".join(f"{r.service} at {r.url}: {r.error}" for r in registry.unreachable()) or "none listed"
        raise APIError(503, f"No model is routable yet. Unreachable services: {down}.", code="no_models",
                       headers={"Retry-After": "2"})
    return {"status": "ready", "models": registry.model_ids,
            "unreachable": [{"service": r.service, "url": r.url, "error": r.error} for r in registry.unreachable()]}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    proxy = _proxy(request)
    proxy.metrics.models.set(len(proxy.registry.model_ids))
    return metrics_response(proxy.metrics.registry)
