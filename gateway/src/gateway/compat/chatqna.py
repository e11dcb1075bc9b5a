"""The ChatQnA backend's API (seed 001), kept working through the gateway.

``POST /v1/chatqna`` takes ``{"messages", "stream", "context", "meta": {"auth_token"}}`` and answers in
OpenAI's shape with ``"model": "chatqna"``, streamed when ``stream`` is true. It is answered on the chat
hot path (:mod:`gateway.chat`); :func:`chat_data` turns its body into a chat request for
``GATEWAY_CHATQNA_MODEL`` (a profile id, or else a model id). ``context`` passages (strings, or
objects with ``text`` or ``content`` and an optional ``title``) are put into the system message as
grounding, numbered, after ``GATEWAY_RAG_INSTRUCTION``. ``meta.auth_token`` is accepted and not checked
(this gateway has no authentication of its own). ``GET /health`` (``{"status": "ok"}``) is the
gateway's own :mod:`gateway.routes` route.
"""

from __future__ import annotations

from typing import Any

from chat_common.errors import APIError
from gateway.config import Settings
from gateway.profiles import Profile, Profiles
from gateway.registry import Registry
from gateway.retrieval import with_passages

__all__ = ["ANSWER_MODEL", "CHAT_PATH", "chat_data"]

CHAT_PATH = "/v1/chatqna"
ANSWER_MODEL = "chatqna"  # the model name every answer of this route carries


def _passage(item: Any, index: int) -> dict[str, Any]:
    if isinstance(item, str):
        text, title = item, None
    elif isinstance(item, dict) and isinstance(item.get("text") or item.get("content"), str):
        text, title = item.get("text") or item["content"], item.get("title")
    else:
        raise APIError(
            400,
            f"context[{index}] must be a string or an object with 'text'.",
            param=f"context.{index}",
            code="invalid_value",
        )
    return {"doc_id": f"context-{index + 1}", "title": title, "text": text}


def chat_data(
    data: dict[str, Any], settings: Settings, profiles: Profiles, registry: Registry
) -> tuple[Profile | None, dict[str, Any]]:
    """The profile serving the route (None when the setting names a model) and the chat request body for
    a ChatQnA body (profile applied, context passages in the system message)."""
    context = data.get("context") or []
    if not isinstance(context, list):
        raise APIError(400, "'context' must be a list of passages.", param="context", code="invalid_value")
    passages = [_passage(item, i) for i, item in enumerate(context)]
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise APIError(
            400, '\'meta\' must be an object such as {"auth_token": ""}.', param="meta", code="invalid_value"
        )
    out = {k: v for k, v in data.items() if k not in ("context", "meta", "model", "profile")}
    profile = profiles.get(settings.chatqna_model)
    out["model"] = settings.chatqna_model
    if profile is not None:
        out = profile.apply(out)
    messages = out.get("messages")
    if passages and isinstance(messages, list) and messages:
        card = registry.card(out["model"]) or {}
        out["messages"], _ = with_passages(
            messages,
            passages,
            settings.rag_instruction,
            context_length=card.get("context_length"),
            reserve=int(out.get("max_tokens") or 256),
        )
    return profile, out
