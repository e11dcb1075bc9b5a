"""Loading and unloading models through the gateway, on every replica of the service that owns them.

``POST /v1/models/{id}/load`` and ``POST /v1/models/{id}/unload`` (unified API); the AlterEgo
backend's spellings of both (seed 004) are in :mod:`gateway.compat.alterego`. Ids may contain slashes
(``microsoft/DialoGPT-medium``). Services that keep every model loaded (inference-gguf) have no such
routes: the gateway answers 400 saying so.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from fastapi import APIRouter, Request

from chat_common.context import REQUEST_ID_HEADER, request_id
from chat_common.errors import APIError
from gateway.auth import allow_model
from gateway.proxy import Proxy
from gateway.registry import Replica, describe_error

__all__ = ["on_every_replica", "router"]

router = APIRouter(tags=["model management"])


@router.post("/v1/models/{model:path}/load")
async def load(request: Request, model: str) -> dict[str, Any]:
    allow_model(request.scope, model)
    return await on_every_replica(request.app.state.proxy, model, "load")


@router.post("/v1/models/{model:path}/unload")
async def unload(request: Request, model: str) -> dict[str, Any]:
    allow_model(request.scope, model)
    return await on_every_replica(request.app.state.proxy, model, "unload")


async def on_every_replica(proxy: Proxy, model: str, action: str) -> dict[str, Any]:
    """``action`` ("load" or "unload") on every replica serving ``model``; the registry is re-read after."""
    replicas = await proxy.route(model)  # 404 listing the known models when nobody serves it
    answers = await asyncio.gather(*(_call(proxy, replica, model, action) for replica in replicas))
    await proxy.registry.refresh()  # /v1/models shows the new state at once
    return {
        "status": "success",
        "message": f"Model '{model}' {action}ed on {len(answers)} replica(s).",
        "id": model,
        "action": action,
        "replicas": [
            {"service": r.service, "url": r.url, "state": a.get("state")}
            for r, a in zip(replicas, answers, strict=True)
        ],
    }


async def _call(proxy: Proxy, replica: Replica, model: str, action: str) -> dict[str, Any]:
    url = f"{replica.url}/v1/models/{model}/{action}"
    try:
        async with proxy.session.post(url, headers={REQUEST_ID_HEADER: request_id() or ""}) as response:
            payload = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise APIError(
            503,
            f"The service '{replica.service}' ({replica.url}) could not {action} '{model}': {describe_error(exc)}.",
            code="upstream_unavailable",
        ) from exc
    if status in (404, 405):
        raise APIError(
            400,
            f"The model '{model}' is served by '{replica.service}', which keeps its models "
            f"loaded and has no {action} operation.",
            param="model",
            code="unsupported_operation",
        )
    if status >= 400:
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else str(payload)[:300]
        raise APIError(
            503 if status >= 500 else status,
            f"The service '{replica.service}' ({replica.url}) refused to {action} '{model}': {message}",
            code=(error or {}).get("code") if isinstance(error, dict) else None,
        )
    return payload if isinstance(payload, dict) else {}
