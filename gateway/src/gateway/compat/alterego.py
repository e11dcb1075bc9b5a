"""The AlterEgo backend's API (seed 004), kept working through the gateway.

``POST /chat/completions`` is that backend's name for the OpenAI chat route: :mod:`gateway.chat`
answers it exactly like ``/v1/chat/completions``. The FastAPI routes here are its model list and its
model management (``POST /models/{name}/load``, ``DELETE /models/{name}/unload``), which act like the
unified API's ``/v1/models/{id}/load`` and ``/unload`` (:mod:`gateway.model_admin`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.auth import allow_model
from gateway.model_admin import on_every_replica
from gateway.proxy import Proxy

__all__ = ["CHAT_PATH", "router"]

router = APIRouter(tags=["AlterEgo compatibility"])

CHAT_PATH = "/chat/completions"  # answered by gateway.chat, in front of this router


@router.get("/models")
async def list_models(request: Request) -> dict[str, object]:
    """The AlterEgo backend's model list: the same as ``GET /v1/models``."""
    proxy: Proxy = request.app.state.proxy
    return {"object": "list", "data": proxy.registry.cards()}


@router.post("/models/{model:path}/load")
async def load(request: Request, model: str) -> dict[str, Any]:
    allow_model(request.scope, model)
    return await on_every_replica(request.app.state.proxy, model, "load")


@router.delete("/models/{model:path}/unload")
async def unload(request: Request, model: str) -> dict[str, Any]:
    allow_model(request.scope, model)
    return await on_every_replica(request.app.state.proxy, model, "unload")
