"""The gateway's OpenAPI document (``/openapi.json``, ``/docs``): FastAPI's routes, plus the chat routes
answered in front of FastAPI (:data:`gateway.chat.CHAT_PATHS`), which FastAPI cannot see, with their
request and response schemas (:mod:`chat_common.protocol`), the error envelope, and the API key schemes
(``Authorization: Bearer`` and ``x-api-key``), required on every operation while auth is on.

The schemas below for the seeds' chat bodies (FineTuneLLM, ChatQnA) document them only: those routes
parse their bodies by hand (:mod:`gateway.compat`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from chat_common.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage
from gateway.auth import OPEN_PATHS
from gateway.compat import alterego, chatqna, finetunellm

__all__ = ["install_openapi"]

REF = "#/components/schemas/{model}"
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer sk-...`"},
    "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "The same key, as `x-api-key`"},
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, which every refusal is."""

    error: ErrorDetail


class FinetuneChatRequest(BaseModel):
    """Seed 003's chat body."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1)
    session_id: str | None = Field(None, description="The conversation; 'default' when absent.")


class ChatQnAMeta(BaseModel):
    auth_token: str | None = Field(None, description="Accepted and not checked (the gateway's API keys are).")


class ChatQnARequest(BaseModel):
    """Seed 001's chat body."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    context: list[str | dict[str, Any]] = Field(
        default_factory=list, description="Passages (strings, or objects with 'text' and 'title') to ground on."
    )
    meta: ChatQnAMeta | None = None


_ERRORS = {
    "400": "Invalid request (the message names the field)",
    "401": "Missing, wrong or expired API key",
    "403": "The API key may not use this model",
    "404": "Unknown model or profile",
    "413": "Body larger than GATEWAY_MAX_BODY_BYTES",
    "429": "Busy, or a rate limit reached (Retry-After, x-ratelimit-*)",
    "503": "A service (or Redis, for API keys, or for rate limits with GATEWAY_REDIS_FAILURE=closed) is unavailable "
    "(Retry-After)",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(
    summary: str, tag: str, request: type[BaseModel], whole: type[BaseModel] | None, stream: str
) -> dict[str, Any]:
    content: dict[str, Any] = {"text/event-stream": {"schema": {"type": "string", "description": stream}}}
    if whole is not None:
        content = {"application/json": {"schema": _ref(whole)}, **content}
    responses: dict[str, Any] = {"200": {"description": "The answer", "content": content}}
    for status, why in _ERRORS.items():
        responses[status] = {"description": why, "content": {"application/json": {"schema": _ref(ErrorResponse)}}}
    return {
        "post": {
            "summary": summary,
            "tags": [tag],
            "operationId": f"chat_{tag.split()[0].lower()}_{request.__name__}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": responses,
        }
    }


_OPENAI_STREAM = (
    "With `stream: true`: server-sent events, one `data: {ChatCompletionChunk}` per piece of the answer, then "
    '`data: [DONE]`. An error after the stream began is a `data: {"error": ...}` event, then `data: [DONE]`.'
)


def chat_paths() -> dict[str, Any]:
    """The OpenAPI path items of the chat routes the hot path serves."""
    openai = _operation("Chat completion (OpenAI)", "chat", ChatCompletionRequest, ChatCompletion, _OPENAI_STREAM)
    return {
        "/v1/chat/completions": openai,
        alterego.CHAT_PATH: _operation(
            "Chat completion (AlterEgo, seed 004: the OpenAI route)",
            "AlterEgo compatibility",
            ChatCompletionRequest,
            ChatCompletion,
            _OPENAI_STREAM,
        ),
        finetunellm.CHAT_PATH: _operation(
            "Streamed chat (FineTuneLLM, seed 003)",
            "FineTuneLLM compatibility",
            FinetuneChatRequest,
            None,
            'Server-sent events: `data: {"token": "..."}` per piece of text, then `data: [DONE]`.',
        ),
        chatqna.CHAT_PATH: _operation(
            "Chat (ChatQnA, seed 001), answered as model 'chatqna'",
            "ChatQnA compatibility",
            ChatQnARequest,
            ChatCompletion,
            _OPENAI_STREAM,
        ),
    }


def build_openapi(app: FastAPI, *, auth: bool) -> dict[str, Any]:
    """FastAPI's document with the chat routes, their schemas and the API key schemes added."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    models: list[type[BaseModel]] = [
        ChatCompletionRequest,
        ChatCompletion,
        ChatCompletionChunk,
        FinetuneChatRequest,
        ChatQnARequest,
        ErrorResponse,
    ]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = SECURITY_SCHEMES
    paths = chat_paths()  # first: the API's main routes lead the docs
    for path, item in schema.get("paths", {}).items():
        paths.setdefault(path, {}).update(item)
    schema["paths"] = paths
    if auth:
        schema["security"] = [{"bearer": []}, {"x-api-key": []}]
        for path, item in schema["paths"].items():
            if path in OPEN_PATHS:
                for operation in item.values():
                    operation["security"] = []  # probes need no key
    return schema


def install_openapi(app: FastAPI, *, auth: bool) -> None:
    """Serve :func:`build_openapi`'s document at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, auth=auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
