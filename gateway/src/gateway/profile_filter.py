"""The answer filter of a profile's request (:class:`gateway.answer.AnswerFilter`): reasoning split out
of the answer, banned phrases replaced with the fallback message, and the answer's ``model`` renamed to
what the client asked for (a profile id, or a seed route's model name).

Non-stream: ``message.reasoning_content`` and ``message.content``. Stream: ``delta.reasoning_content``
chunks, then ``delta.content`` chunks (:mod:`gateway.reasoning`). A guarded answer (:mod:`gateway.guardrails`)
that turns out to contain a banned phrase, in its reasoning or its content, gets the fallback message as
its content and ``finish_reason: "content_filter"``; a stream then ends at once (what was already sent
stays sent, and it never contains the phrase). Every decision on a guarded answer is counted in
``gateway_guardrail_decisions`` and logged with the profile and the phrase, never the prompt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from chat_common import sse
from chat_common.answer_filter import FILTER_FIELD, FILTER_VERSION, TextFilter, filter_choice
from chat_common.guardrails import Guardrail
from chat_common.protocol import ChatCompletionRequest
from gateway.answer import AnswerFilter
from gateway.metrics import GatewayMetrics
from gateway.profiles import Profile
from gateway.registry import Registry

__all__ = ["ProfileFilter"]

logger = logging.getLogger(__name__)


class ProfileFilter:
    """Filter for one request of ``profile`` (None: only the rename), answering as ``answer_model``.

    :meth:`request` puts the filter into the request body for a model whose service applies it itself
    (its card advertises ``switchboard_filter``); when the replica's answer says it did
    (:meth:`upstream_applied`), the gateway only counts the guardrail's decision and relays the stream's
    bytes as they come. Otherwise it filters the answer here, with the same code."""

    def __init__(self, profile: Profile | None, answer_model: str | None, metrics: GatewayMetrics | None) -> None:
        self.profile = profile
        self.answer_model = answer_model
        self.metrics = metrics
        self.guardrail: Guardrail | None = profile.guardrail() if profile is not None else None
        self.tags = (profile.reasoning.open, profile.reasoning.close) if profile and profile.reasoning else None
        self.sent = False  # the filter went upstream with the request

    # -- pushing down ------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The filter as the ``switchboard_filter`` extension (:class:`chat_common.answer_filter.FilterSpec`)."""
        spec: dict[str, Any] = {"answer_model": self.answer_model}
        if self.tags is not None:
            spec["reasoning_tags"] = list(self.tags)
        if self.guardrail is not None:
            spec["banned"] = self.guardrail.phrases
            spec["fallback"] = self.guardrail.fallback
        return spec

    def request(self, data: dict[str, Any], registry: Registry) -> dict[str, Any]:
        """``data`` (the request body for the profile's model) with the filter for the model service when
        the model's card says its service applies it. A ``switchboard_filter`` the client sent is dropped
        either way: a profile's guardrail is the gateway's, not the client's, to set."""
        data.pop(FILTER_FIELD, None)
        card = registry.card(str(data.get("model"))) or {}
        if card.get(FILTER_FIELD) == FILTER_VERSION:
            data[FILTER_FIELD] = self.spec()
            self.sent = True
        return data

    def upstream_applied(self) -> AnswerFilter | None:
        """What is left to do for an answer whose replica says it applied a filter: nothing but counting
        the guardrail's decision when this filter was sent (None without a guardrail), all of it when not."""
        if not self.sent:
            return self
        self._count("service")
        return _Decisions(self) if self.guardrail is not None else None

    def _count(self, by: str) -> None:
        if self.metrics is not None and (self.tags is not None or self.guardrail is not None):
            self.metrics.profile_filters.labels(by).inc()

    # -- decisions ---------------------------------------------------------------------------------
    def _decide(self, phrase: str | None, *, blocked: bool | None = None) -> None:
        if self.guardrail is None or self.profile is None:
            return
        decision = "blocked" if (phrase if blocked is None else blocked) else "passed"
        if self.metrics is not None:
            self.metrics.guardrail_decisions.labels(self.profile.id, decision).inc()
        logger.info("guardrail decision", extra={"profile": self.profile.id, "decision": decision, "phrase": phrase})

    # -- whole answers -----------------------------------------------------------------------------
    def completion(self, chat: ChatCompletionRequest, payload: dict[str, Any]) -> dict[str, Any]:
        self._count("gateway")
        if self.answer_model:
            payload["model"] = self.answer_model
        for choice in payload.get("choices") or []:
            phrase = filter_choice(choice, self.tags, self.guardrail)
            self._decide(phrase)
        return payload

    # -- streams -----------------------------------------------------------------------------------
    def stream(self, chat: ChatCompletionRequest, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        if self.tags is None and self.guardrail is None:
            return self._renamed(pieces)
        self._count("gateway")
        return _FilteredStream(self).run(pieces)

    async def _renamed(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        if not self.answer_model:
            async for piece in pieces:
                yield piece
            return
        async for piece in pieces:
            out: list[bytes] = []
            for payload in _events(piece):
                if payload is None:
                    out.append(sse.DONE)
                    continue
                if "choices" in payload:
                    payload["model"] = self.answer_model
                out.append(sse.event(payload))
            yield b"".join(out)


class _Decisions:
    """The guardrail's decision on an answer its replica filtered: read from the bytes (a
    ``content_filter`` finish reason), which are passed on unchanged."""

    def __init__(self, owner: ProfileFilter) -> None:
        self.owner = owner

    def completion(self, chat: ChatCompletionRequest, payload: dict[str, Any]) -> dict[str, Any]:
        for choice in payload.get("choices") or []:
            self.owner._decide(None, blocked=choice.get("finish_reason") == "content_filter")
        return payload

    async def stream(self, chat: ChatCompletionRequest, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        blocked = False
        done = False
        try:
            async for piece in pieces:
                if _BLOCKED in piece:
                    blocked = True
                done = piece.endswith(sse.DONE)
                yield piece
        finally:
            if done:  # a complete answer (not one cut short or left by the client)
                self.owner._decide(None, blocked=blocked)
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()


_BLOCKED = b'"finish_reason":"content_filter"'


def _events(piece: bytes) -> list[dict[str, Any] | None]:
    """The events of one relayed piece (None for ``[DONE]``)."""
    out: list[dict[str, Any] | None] = []
    for raw in piece.split(sse.EVENT_END):
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        out.append(None if data == b"[DONE]" else orjson.loads(data))
    return out


class _FilteredStream:
    """Per-answer state of a stream the gateway filters (:class:`chat_common.answer_filter.TextFilter`)."""

    def __init__(self, owner: ProfileFilter) -> None:
        self.owner = owner
        self.filter = TextFilter(owner.tags, owner.guardrail)
        self.template: dict[str, Any] = {"object": "chat.completion.chunk"}
        self.frame: tuple[bytes, bytes] | None = None  # a content chunk's bytes around its delta
        self.flushed = False

    @property
    def blocked(self) -> str | None:
        return self.filter.blocked

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        if self.frame is not None and finish_reason is None and len(delta) == 1:
            ((field, text),) = delta.items()
            prefix, suffix = self.frame
            return prefix + b'"' + field.encode() + b'":' + orjson.dumps(text) + suffix + sse.EVENT_END
        chunk = {**self.template, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return sse.event(chunk)

    def _flush(self) -> list[bytes]:
        """Everything still held back (answer end)."""
        if self.flushed:
            return []
        self.flushed = True
        out = [self._chunk({field: text}) for field, text in self.filter.finish()]
        if self.blocked is None:
            self.owner._decide(None)
        return out

    def _fallback(self) -> list[bytes]:
        self.owner._decide(self.blocked)
        assert self.owner.guardrail is not None
        return [
            self._chunk({"content": self.owner.guardrail.fallback}),
            self._chunk({}, "content_filter"),
            sse.DONE,
        ]

    def _text(self, text: str, reasoning: str = "") -> list[bytes]:
        """Chunks for answer text (and reasoning the upstream already split off) as it arrives."""
        return [self._chunk({field: part}) for field, part in self.filter.feed(text, reasoning)]

    def _learn(self, prefix: bytes, suffix: bytes) -> None:
        """Keep a content chunk's bytes around its delta as the template of the chunks sent."""
        model = self.owner.answer_model
        if model:
            payload = orjson.loads(prefix[6:] + suffix)
            old = b'"model":' + orjson.dumps(payload.get("model"))
            prefix = prefix.replace(old, b'"model":' + orjson.dumps(model), 1)
        self.frame = (prefix, suffix)

    def _only_content(self, piece: bytes) -> list[str] | None:
        """The texts of a piece made only of content chunks that do not finish the answer (found by one
        pass over the piece, decoded by one ``orjson.loads``); None for any other piece."""
        events = piece.count(sse.EVENT_END)
        strings = _CONTENT_STRING.findall(piece)
        if not events or len(strings) != events or piece.count(b'"finish_reason":null') != events:
            return None
        if self.frame is None:
            first = _content_only(piece[: piece.index(sse.EVENT_END)])
            if first is None:
                return None
            self._learn(first[0], first[2])
        texts: list[str] = orjson.loads(b"[" + b",".join(strings) + b"]")
        return texts

    async def run(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The filtered stream. The content chunks of one relayed piece (they arrived together) are
        filtered as one text and sent as one chunk of each kind; a content chunk is read without parsing
        the whole event (:func:`_content_only`), so the filter costs little over the plain relay."""
        model = self.owner.answer_model
        try:
            async for piece in pieces:
                texts = self._only_content(piece)
                if texts is not None:  # the common piece: content chunks and nothing else
                    out = self._text("".join(texts))
                    if self.blocked:
                        out.extend(self._fallback())
                        yield b"".join(out)
                        return
                    if out:
                        yield b"".join(out)
                    continue
                out = []
                text: list[str] = []
                for raw in piece.split(sse.EVENT_END):
                    if not raw.strip():
                        continue
                    fast = _content_only(raw)
                    if fast is not None:
                        if self.frame is None:
                            self._learn(fast[0], fast[2])
                        text.append(fast[1])
                        continue
                    if text:
                        out.extend(self._text("".join(text)))
                        text = []
                        if self.blocked:
                            break
                    payload = _event(raw)
                    if payload is None:
                        out.extend(self._flush())
                        if self.blocked:
                            break
                        out.append(sse.DONE)
                        continue
                    if model and "model" in payload:
                        payload["model"] = model
                    choices = payload.get("choices")
                    if not choices:  # usage chunk, error event, sources
                        out.append(sse.event(payload))
                        continue
                    self.template = {k: v for k, v in payload.items() if k not in ("choices", "usage")}
                    choice = choices[0]
                    delta = choice.get("delta") or {}
                    content = delta.pop("content", None) or ""
                    reasoning = delta.pop("reasoning_content", None) or ""
                    out.extend(self._text(content, reasoning))
                    if self.blocked:
                        break
                    finish = choice.get("finish_reason")
                    if finish is not None:
                        out.extend(self._flush())
                        if self.blocked:
                            break
                    if delta or finish is not None:  # role, tool calls, the finish reason: passed on as they are
                        out.append(sse.event(payload))
                if text and not self.blocked:
                    out.extend(self._text("".join(text)))
                if self.blocked:
                    out.extend(self._fallback())
                    yield b"".join(out)
                    return
                if out:
                    yield b"".join(out)
        finally:
            close = getattr(pieces, "aclose", None)
            if close is not None:
                await close()


_CONTENT_DELTA = b'"delta":{"content":"'
# A delta that is only a content string (a quote inside the string is always escaped, so this cannot
# match inside one).
_CONTENT_STRING = re.compile(rb'"delta":\{"content":("(?:[^"\\]|\\.)*")\}')


def _content_only(raw: bytes) -> tuple[bytes, str, bytes] | None:
    """``(prefix, text, suffix)`` of a chunk event whose delta is only ``content`` and which does not
    finish the answer (``prefix`` ends with ``"delta":{``, ``suffix`` starts with its ``}``); None for
    any other event, which is then parsed in full."""
    at = raw.find(_CONTENT_DELTA)
    if at < 0 or not raw.startswith(b"data: {"):
        return None
    start = at + len(_CONTENT_DELTA) - 1  # the string's opening quote
    end = start + 1
    while True:
        end = raw.find(b'"', end)
        if end < 0:
            return None
        slashes = 0
        while raw[end - 1 - slashes] == 0x5C:  # a quote after an odd number of backslashes is escaped
            slashes += 1
        if slashes % 2 == 0:
            break
        end += 1
    if raw[end + 1] != 0x7D or raw.find(b'"finish_reason":null', end) < 0:  # 0x7D: the delta's "}"
        return None
    text = orjson.loads(raw[start : end + 1])
    return raw[: at + len(b'"delta":{')], text, raw[end + 1 :].rstrip()


def _event(raw: bytes) -> dict[str, Any] | None:
    line = raw.strip()
    data = line[5:].strip() if line.startswith(b"data:") else line
    return None if data == b"[DONE]" else dict(orjson.loads(data))
