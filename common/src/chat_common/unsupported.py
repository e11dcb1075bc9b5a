"""Request fields that ask for something the engines here do not produce (tools, log probabilities, and
``response_format`` where a model has no grammar sampling): a 400 naming the field, never a 200 without it."""

from __future__ import annotations

from typing import Any

from chat_common.errors import APIError
from chat_common.protocol import ChatCompletionRequest

__all__ = ["refuse_unsupported"]


def refuse_unsupported(request: ChatCompletionRequest, *, structured_output: bool) -> None:
    """Raises :class:`APIError` 400 ``unsupported_parameter`` for the first such field the request sets. A
    ``response_format`` of plain text is what every answer is, so it passes; so do tools offered with
    ``tool_choice: "none"``."""
    extra = request.model_extra or {}
    asked = [name for name in _UNSUPPORTED if _asks_for(name, extra)]
    if not structured_output and _asks_for_format(extra.get("response_format")):
        asked.append("response_format")
    if asked:
        name = asked[0]
        raise APIError(
            400,
            f"The model '{request.model}' does not support {name} here; remove the field "
            f"({_UNSUPPORTED.get(name, 'answers are plain text on this model')}).",
            param=name,
            code="unsupported_parameter",
        )


# Fields that ask for something no engine here produces, with what the client can do instead.
_UNSUPPORTED = {
    "tools": "tool calling is not implemented; describe the tools in the prompt instead",
    "tool_choice": "tool calling is not implemented",
    "functions": "function calling is not implemented",
    "function_call": "function calling is not implemented",
    "logprobs": "log probabilities are not returned yet",
    "top_logprobs": "log probabilities are not returned yet",
}


def _asks_for(name: str, extra: dict[str, Any]) -> bool:
    """Whether a field asks for the feature: null, false and empty lists ask for nothing (clients send them
    as defaults), and tools offered with ``tool_choice: "none"`` are a plain-text request."""
    if name in ("tools", "tool_choice") and extra.get("tool_choice") == "none":
        return False
    if name in ("functions", "function_call") and extra.get("function_call") == "none":
        return False
    return bool(extra.get(name))


def _asks_for_format(value: Any) -> bool:
    return bool(value) and not (isinstance(value, dict) and value.get("type") == "text")
