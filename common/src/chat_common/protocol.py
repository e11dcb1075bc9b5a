"""OpenAI chat-completions wire protocol, defined once for every Switchboard service.

Requests accept fields this module does not know (clients keep adding new ones); they are kept in
``model_extra`` and ignored by the services, with a debug log. The request fields after the
``# Extensions`` comment (``top_k``, ``min_p``, ``repeat_penalty``, ``ignore_eos``) are not part of OpenAI's
API but are accepted by llama.cpp's and vLLM's servers under the same names.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_STOP_SEQUENCES",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "DeltaMessage",
    "ModelCard",
    "ModelList",
    "ResponseMessage",
    "StreamOptions",
    "Usage",
    "completion_id",
]

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 16
"""OpenAI allows 4 stop sequences; local deployments routinely use more (seed 003 uses 11)."""

Role = Literal["system", "developer", "user", "assistant", "tool"]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    """Base for requests: unknown fields are accepted and kept, never an error."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> OpenAIModel:
        if self.model_extra and logger.isEnabledFor(logging.DEBUG):
            logger.debug("ignoring unknown fields %s in %s", sorted(self.model_extra), type(self).__name__)
        return self


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIModel):
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text, with content parts joined; ``None`` content reads as empty."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIModel):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    user: str | None = None
    # Extensions (llama.cpp server / vLLM names).
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        values = [value] if isinstance(value, str) else value or []
        if any(v == "" for v in values):
            raise ValueError("stop sequences must not be empty strings")
        return value

    @property
    def stop_sequences(self) -> list[str] | None:
        """``stop`` as a list, or ``None`` when the request did not set it."""
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``. ``context_length`` is a Switchboard addition, and a card takes extra
    fields of its service's own: ``loaded`` (inference-gguf, retriever), ``state`` (inference-hf: loaded,
    device, quantization, memory...)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str
    context_length: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
