"""The FineTuneLLM backend's API (seed 003), kept working through the gateway.

``POST /chat`` streams through the gateway's chat path (:mod:`gateway.chat`): :func:`chat_request`
turns its ``{"prompt", "session_id"}`` body into a streamed chat request with a session, and
:func:`reframe_stream` turns the OpenAI chunks back into that backend's ``data: {"token": ...}``
events. The FastAPI routes here read and clear a session's messages and report status. Sessions live in
the history service; the model is ``GATEWAY_FINETUNE_MODEL``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from chat_common import sse
from chat_common.errors import APIError
from chat_common.protocol import ChatCompletionRequest
from chat_common.requests import chat_request as validated_chat_request
from chat_common.requests import json_object
from gateway.config import FinetuneSampling
from gateway.history import HistoryClient, HistoryUnavailable
from gateway.proxy import Proxy
from gateway.sessions import SESSION_ID_PATTERN

__all__ = ["CHAT_PATH", "DEFAULT_SESSION", "chat_request", "reframe_stream", "router"]

router = APIRouter(tags=["FineTuneLLM compatibility"])

CHAT_PATH = "/chat"  # answered by gateway.chat, in front of this router
DEFAULT_SESSION = "default"
SessionId = Annotated[str, Query(pattern=SESSION_ID_PATTERN)]


def _history(request: Request) -> HistoryClient:
    history: HistoryClient | None = request.app.state.history
    if history is None:
        raise APIError(
            503, "This gateway keeps no conversations (GATEWAY_HISTORY_URL is empty).", code="sessions_disabled"
        )
    return history


def _unavailable(exc: HistoryUnavailable) -> APIError:
    return APIError(
        503,
        f"The history service is unavailable ({exc}). Retry later.",
        code="history_unavailable",
        headers={"Retry-After": "2"},
    )


@router.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok", "service": "switchboard-gateway"}


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    proxy: Proxy = request.app.state.proxy
    model = request.app.state.settings.finetune_model
    history: HistoryClient | None = request.app.state.history
    database = "disabled" if history is None else ("connected" if await history.ready() else "unavailable")
    return {
        "status": "ok",
        "model": model,
        "model_loaded": proxy.registry.card(model) is not None,
        "database": database,
    }


@router.get("/messages")
async def messages(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 20, session_id: SessionId = DEFAULT_SESSION
) -> dict[str, Any]:
    """The session's last ``limit`` messages, oldest first (``session_id`` defaults to "default")."""
    try:
        stored = await _history(request).recent(session_id, limit)
    except HistoryUnavailable as exc:
        raise _unavailable(exc) from exc
    return {
        "session_id": session_id,
        "messages": [
            {
                "role": m["role"],
                "content": m["content"],
                "timestamp": m["created_at"],
                "session_id": session_id,
                "seq": m["seq"],
                "status": m.get("status", "complete"),
            }
            for m in stored
        ],
    }


@router.post("/clear-history")
async def clear_history(request: Request, session_id: SessionId = DEFAULT_SESSION) -> dict[str, Any]:
    try:
        deleted = await _history(request).delete(session_id)
    except HistoryUnavailable as exc:
        raise _unavailable(exc) from exc
    return {
        "status": "success",
        "message": f"History cleared for session {session_id}",
        "session_id": session_id,
        "deleted": deleted,
    }


def chat_request(body: bytes, model: str, sampling: FinetuneSampling) -> ChatCompletionRequest:
    """FineTuneLLM's ``{"prompt", "session_id"}`` (session "default" when absent) as a streamed chat request
    with that backend's ``sampling`` (``GATEWAY_FINETUNE_SAMPLING``)."""
    data = json_object(body, "with a 'prompt' (and optionally a 'session_id')")
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise APIError(
            400,
            "Send a JSON object with a non-empty 'prompt' string (and optionally 'session_id').",
            param="prompt",
            code="invalid_value",
        )
    return validated_chat_request(
        {
            "model": model,
            "messages": [{"role": "user", "content": data["prompt"]}],
            "stream": True,
            "stream_options": {"include_usage": True},  # token counts for the history and the metrics
            "session_id": data.get("session_id") or DEFAULT_SESSION,
            **sampling.model_dump(exclude_none=True),
        }
    )


def reframe_stream(payloads: list[dict[str, Any] | None]) -> bytes:
    """OpenAI chunk events as FineTuneLLM's stream: ``data: {"token": "..."}`` per piece of text; an error
    event and ``data: [DONE]`` are passed on."""
    out: list[bytes] = []
    for payload in payloads:
        if payload is None:
            out.append(sse.DONE)
        elif "error" in payload:
            out.append(sse.event(payload))
        else:
            out.extend(
                sse.event({"token": text})
                for choice in payload.get("choices") or ()
                if (text := (choice.get("delta") or {}).get("content"))
            )
    return b"".join(out)
