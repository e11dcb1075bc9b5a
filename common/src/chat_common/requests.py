"""Parsing a chat request body into the protocol model, with errors a person can act on."""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from chat_common.errors import APIError, validation_message
from chat_common.protocol import ChatCompletionRequest

__all__ = ["parse_chat_request"]


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Raises :class:`APIError` 400 for a body that is not JSON or not a valid chat request."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}. Send a JSON object with "
                       "'model' and 'messages'.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object with 'model' and 'messages'.",
                       code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_url=False)))
        raise APIError(400, message, param=param, code="invalid_value") from None
