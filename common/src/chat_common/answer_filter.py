"""A profile's answer filter (reasoning split, banned phrases, the answer's model name), the same logic in
the gateway and in the model services, and the request extension that pushes it down to a service.

The gateway applies a profile's filter to the answer it relays. That costs gateway CPU on every streamed
event, so a model service that can do it advertises the capability in its ``/v1/models`` cards
(``"switchboard_filter": 1``); the gateway then sends the filter with the request as the extension field
``switchboard_filter`` (:class:`FilterSpec`) and the service streams ``delta.reasoning_content`` /
``delta.content`` already split and guarded, its answer carrying the header ``x-switchboard-filter: 1``.
The gateway relays such an answer as it comes; an answer without that header (an older replica) it filters
itself, with the same :class:`TextFilter` and :func:`filter_choice`, so a client cannot tell which did it.

The contract of the output, either way: reasoning chunks first, then content chunks; a guarded answer
that turns out to hold a banned phrase (in its reasoning or its content) has the fallback message as its
content and ``finish_reason: "content_filter"``, and a stream then ends at once (what was sent before stays
sent and never holds the phrase).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from chat_common.errors import APIError
from chat_common.guardrails import Guardrail, StreamGuard
from chat_common.protocol import ChatCompletionRequest
from chat_common.reasoning import ReasoningSplitter, split_reasoning

__all__ = [
    "FILTER_FIELD",
    "FILTER_HEADER",
    "FILTER_VERSION",
    "FilterSpec",
    "StreamShaper",
    "TextFilter",
    "filter_choice",
    "requested_filter",
]

logger = logging.getLogger(__name__)

FILTER_FIELD = "switchboard_filter"
"""The request extension field, and the key of a model card that advertises the capability."""
FILTER_VERSION = 1
"""The version of the extension a service understands (the value of ``switchboard_filter`` in its cards)."""
FILTER_HEADER = "x-switchboard-filter"
"""The response header (value ``"1"``) by which a service says it applied the requested filter."""

Delta = tuple[str, str]  # (field, text): "reasoning_content" or "content"


class FilterSpec(BaseModel):
    """What ``switchboard_filter`` asks of the answer. ``answer_model``: the ``model`` the answer names
    (a profile id); ``reasoning_tags``: ``[open, close]``, or null for no split; ``banned``: phrases that
    replace the answer with ``fallback``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer_model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    reasoning_tags: tuple[Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]] | None = None
    banned: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    fallback: Annotated[str, Field(min_length=1)] = "I'm sorry, I can't help with that."
    _guardrail: Guardrail | None = PrivateAttr(default=None)

    @field_validator("banned")
    @classmethod
    def _phrases(cls, value: list[str]) -> list[str]:
        Guardrail(value, "")  # a phrase of whitespace only is refused here, not at the first answer
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._guardrail = Guardrail(self.banned, self.fallback) if self.banned else None

    @property
    def guardrail(self) -> Guardrail | None:
        return self._guardrail

    @property
    def shapes_text(self) -> bool:
        """Whether the answer's text changes (a split or a guard), not only its model name."""
        return self.reasoning_tags is not None or self._guardrail is not None


def requested_filter(request: ChatCompletionRequest) -> FilterSpec | None:
    """The request's ``switchboard_filter`` (None when it has none); a malformed one is a 400."""
    raw = (request.model_extra or {}).get(FILTER_FIELD)
    if raw is None:
        return None
    try:
        return FilterSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or FILTER_FIELD}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise APIError(
            400,
            f"'{FILTER_FIELD}' is invalid: {problems}. It is an object with 'answer_model', 'reasoning_tags' "
            "([open, close]), 'banned' (phrases) and 'fallback', all optional.",
            param=FILTER_FIELD,
            code="invalid_value",
        ) from None


class TextFilter:
    """One answer's text through the reasoning split and the guard, incrementally: :meth:`feed` each
    piece of text as it comes, :meth:`finish` once at the end. Both return the ``(field, text)`` deltas
    safe to send now, reasoning before content; once a banned phrase is found ``blocked`` names it and
    nothing more is released (the caller sends the fallback message instead)."""

    def __init__(self, tags: tuple[str, str] | None, guardrail: Guardrail | None) -> None:
        self.splitter = ReasoningSplitter(*tags) if tags is not None else None
        self.guards: dict[str, StreamGuard] | None = (
            {"reasoning_content": guardrail.stream(), "content": guardrail.stream()} if guardrail is not None else None
        )
        self.blocked: str | None = None
        self._reasoning_done = False
        self._finished = False

    def _guarded(self, field: str, text: str, *, last: bool = False) -> list[Delta]:
        if self.blocked is not None:
            return []
        if self.guards is not None:
            guard = self.guards[field]
            released = guard.feed(text) + (guard.finish() if last else "")
            if guard.blocked:
                self.blocked = guard.blocked
                return []
            text = released
        return [(field, text)] if text else []

    def _deltas(self, reasoning: str, content: str) -> list[Delta]:
        # The reasoning guard releases all it holds when the content starts: every reasoning delta
        # comes before the first content delta.
        out = self._guarded("reasoning_content", reasoning) if reasoning else []
        if content:
            if not self._reasoning_done:
                self._reasoning_done = True
                out += self._guarded("reasoning_content", "", last=True)
            out += self._guarded("content", content)
        return out

    def feed(self, text: str, reasoning: str = "") -> list[Delta]:
        """Deltas for new answer text (and reasoning an upstream already split off)."""
        if self.splitter is not None and text:
            more_reasoning, text = self.splitter.feed(text)
            reasoning += more_reasoning
        return self._deltas(reasoning, text)

    def finish(self) -> list[Delta]:
        """Everything still held back (the answer's end); ``[]`` when called again."""
        if self._finished:
            return []
        self._finished = True
        reasoning, content = self.splitter.finish() if self.splitter is not None else ("", "")
        out = self._deltas(reasoning, content)
        if not self._reasoning_done:
            self._reasoning_done = True
            out += self._guarded("reasoning_content", "", last=True)
        return out + self._guarded("content", "", last=True)


def filter_choice(choice: dict[str, Any], tags: tuple[str, str] | None, guardrail: Guardrail | None) -> str | None:
    """Apply the filter to one choice of a whole answer, in place: ``message.reasoning_content`` split
    out of ``message.content``; a banned phrase makes the content the fallback (no reasoning) and the
    finish reason ``content_filter``. Returns the banned phrase found, or None."""
    message = choice.get("message") or {}
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content")
    if tags is not None:
        split, content = split_reasoning(content, *tags)
        if split is not None:
            reasoning = (reasoning or "") + split
        message["content"] = content
        if reasoning is not None:
            message["reasoning_content"] = reasoning
    if guardrail is None:
        return None
    phrase = guardrail.find(content) or guardrail.find(reasoning or "")
    if phrase:
        message["content"] = guardrail.fallback
        message.pop("reasoning_content", None)
        choice["finish_reason"] = "content_filter"
    return phrase


class StreamShaper:
    """A model service's side of a pushed-down filter for one streamed answer: the deltas of its chunks.

    :meth:`feed` (each decoded text) and :meth:`finish` (the generation's end) return ``(delta,
    finish_reason)`` pairs to send as chunks; when a banned phrase is found, the last pair is the
    fallback's ``({}, "content_filter")`` and ``blocked`` is set: the stream ends there (the caller sends
    ``[DONE]`` and cancels the generation)."""

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self.text = TextFilter(spec.reasoning_tags, spec.guardrail)
        self.blocked: str | None = None

    @property
    def role(self) -> dict[str, Any]:
        """The first chunk's delta (no empty content before reasoning when the text is shaped)."""
        return {"role": "assistant"} if self.spec.shapes_text else {"role": "assistant", "content": ""}

    def feed(self, text: str) -> list[tuple[dict[str, Any], str | None]]:
        return self._chunks(self.text.feed(text))

    def finish(self) -> list[tuple[dict[str, Any], str | None]]:
        chunks = self._chunks(self.text.finish())
        if self.blocked is None:
            self._decide(None)
        return chunks

    def _chunks(self, deltas: list[Delta]) -> list[tuple[dict[str, Any], str | None]]:
        out: list[tuple[dict[str, Any], str | None]] = [({field: text}, None) for field, text in deltas]
        if self.text.blocked is not None and self.blocked is None:
            self.blocked = self.text.blocked
            self._decide(self.blocked)
            assert self.spec.guardrail is not None
            out += [({"content": self.spec.guardrail.fallback}, None), ({}, "content_filter")]
        return out

    def _decide(self, phrase: str | None) -> None:
        if self.spec.guardrail is not None:
            decision = "blocked" if phrase else "passed"
            logger.info("guardrail decision", extra={"decision": decision, "phrase": phrase})

    @staticmethod
    def completion(spec: FilterSpec, payload: dict[str, Any]) -> dict[str, Any]:
        """A whole answer (a ``ChatCompletion`` as JSON) with the filter applied."""
        if spec.answer_model:
            payload["model"] = spec.answer_model
        for choice in payload.get("choices") or []:
            phrase = filter_choice(choice, spec.reasoning_tags, spec.guardrail)
            if spec.guardrail is not None:
                logger.info(
                    "guardrail decision", extra={"decision": "blocked" if phrase else "passed", "phrase": phrase}
                )
        return payload
