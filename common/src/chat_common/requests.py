"""Parsing a chat request body into the protocol model, with errors a person can act on."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from chat_common.errors import APIError, validation_message
from chat_common.protocol import MAX_STOP_SEQUENCES, ChatCompletionRequest

__all__ = ["chat_request", "json_object", "parse_chat_request"]


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Raises :class:`APIError` 400 for a body that is not JSON or not a valid chat request."""
    return chat_request(json_object(body, "with 'model' and 'messages'"))


def json_object(body: bytes, expected: str) -> dict[str, Any]:
    """The body as a JSON object; :class:`APIError` 400 otherwise. ``expected`` says what it should hold."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400, f"The request body is not valid JSON: {exc}. Send a JSON object {expected}.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object {expected}.", code="invalid_json")
    return data


def chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    """``data`` as a chat request; :class:`APIError` 400 naming the first invalid field otherwise."""
    _refuse_what_no_model_reads(data)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_url=False)))
        raise APIError(400, message, param=param, code="invalid_value") from None


def _refuse_what_no_model_reads(data: dict[str, Any]) -> None:
    """Fields whose generic validation message would mislead ("should be a valid string"): say what is wrong."""
    model = data.get("model")
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise APIError(
            400,
            f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences, not {len(stop)}; send fewer.",
            param="stop",
            code="invalid_value",
        )
    messages = data.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                raise APIError(
                    400,
                    f"The model {model!r} reads text only: content parts of type {kind!r} are not supported "
                    f"(messages[{i}].content[{j}]). Send the content as text.",
                    param=f"messages[{i}].content[{j}]",
                    code="unsupported_parameter",
                )
