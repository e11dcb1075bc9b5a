"""Conversations through the gateway: a session's history goes before a request, the exchange is stored after.

A request names its session with the ``session_id`` body field (extension; the OpenAI SDK sends it with
``extra_body``) or the ``X-Session-ID`` header. The request's system messages stay first, then the
session's last exchanges (as many as fit the model's context), then the request's own messages. After
the answer (streamed or not) the request's messages and the assistant's answer as relayed to the client
are stored; an answer cut short by a disconnect or a failing service is stored marked ``interrupted``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from chat_common.errors import APIError
from chat_common.protocol import ChatCompletionRequest
from gateway.tokens import estimate_messages

__all__ = [
    "SESSION_HEADER",
    "SESSION_ID_PATTERN",
    "Transcript",
    "answer_message",
    "compose",
    "fit_history",
    "new_exchange_id",
    "request_messages",
    "session_id_of",
]

SESSION_HEADER = b"x-session-id"
SESSION_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


def session_id_of(chat: ChatCompletionRequest, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session a request belongs to (body field first, then header), or None; 400 when malformed."""
    value = (chat.model_extra or {}).get("session_id")
    if value is None:
        value = next((v.decode("latin-1") for k, v in headers if k == SESSION_HEADER), None)
    if value is None:
        return None
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise APIError(
            400,
            "Invalid session id: use 1-128 characters of A-Z a-z 0-9 . _ : -",
            param="session_id",
            code="invalid_value",
        )
    return value


def fit_history(
    history: list[dict[str, Any]], request: list[dict[str, Any]], *, context_length: int | None, reserve: int
) -> list[dict[str, Any]]:
    """The newest part of ``history`` that fits beside ``request`` and ``reserve`` tokens for the answer.

    Token counts are estimated (the gateway has no tokenizer): cautiously, so that a trimmed prompt
    fits; the model service still checks the real count. Whole exchanges are dropped, oldest first:
    the kept history starts with a user message.
    """
    if not history or context_length is None:
        return history
    budget = context_length - reserve - estimate_messages(request)
    kept: list[dict[str, Any]] = []
    used = 0
    for message in reversed(history):
        used += estimate_messages([message])
        if used > budget:
            break
        kept.append(message)
    kept.reverse()
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def compose(messages: list[dict[str, Any]], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages to forward: system messages, then ``history``, then the request's other messages."""
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    past = [{"role": m["role"], "content": m["content"]} for m in history]
    return [*system, *past, *rest]


@dataclass
class Transcript:
    """What the assistant said, as it reached the client (streamed events or a whole completion)."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # id, created, model of the stream's chunks
    _held: bytes = b""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None and self.error is None

    def feed(self, piece: bytes) -> list[dict[str, Any] | None]:
        """Take in relayed SSE bytes (whole events, possibly several); returns the events' payloads in
        order, ``None`` standing for ``data: [DONE]``."""
        data = self._held + piece
        *events, self._held = data.split(b"\n\n")
        payloads: list[dict[str, Any] | None] = []
        for event in events:
            for line in event.split(b"\n"):
                if line == b"data: [DONE]":
                    payloads.append(None)
                elif line.startswith(b"data: "):
                    payload = orjson.loads(line[6:])
                    self._take(payload)
                    payloads.append(payload)
        return payloads

    def take_completion(self, body: bytes) -> dict[str, Any]:
        """Take in a whole (non-streamed) completion; returns it parsed."""
        payload: dict[str, Any] = orjson.loads(body)
        choice = payload["choices"][0]
        self.parts.append(choice["message"].get("content") or "")
        self.finish_reason = choice.get("finish_reason")
        self.usage = payload.get("usage")
        return payload

    def _take(self, payload: dict[str, Any]) -> None:
        if "error" in payload:
            self.error = str(payload["error"].get("message"))
            return
        if not self.identity and "id" in payload:
            self.identity = {k: payload.get(k) for k in ("id", "created", "model")}
        for choice in payload.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if payload.get("usage"):
            self.usage = payload["usage"]


def new_exchange_id() -> str:
    """An id for one exchange (a request and its answer): its messages' ids are made from it, never from the
    request id, which clients may reuse; so a retried write of the same exchange stores it once."""
    return uuid.uuid4().hex


def request_messages(chat: ChatCompletionRequest, *, exchange_id: str, request_id: str) -> list[dict[str, Any]]:
    """The request's own non-system messages, to store (ids ``<exchange_id>:<index>``)."""
    return [
        {"role": message.role, "content": message.text, "request_id": request_id, "message_id": f"{exchange_id}:{i}"}
        for i, message in enumerate(chat.messages)
        if message.role not in ("system", "developer")
    ]


def answer_message(
    chat: ChatCompletionRequest,
    transcript: Transcript,
    *,
    exchange_id: str,
    request_id: str,
    sources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The assistant's answer as relayed, to store (id ``<exchange_id>:answer``); ``interrupted`` unless it
    ended with a finish reason and no error."""
    usage = transcript.usage or {}
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": transcript.text,
        "model": chat.model,
        "request_id": request_id,
        "message_id": f"{exchange_id}:answer",
        "status": "complete" if transcript.complete else "interrupted",
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "metadata": {"finish_reason": transcript.finish_reason} if transcript.finish_reason else {},
    }
    if transcript.error:
        answer["metadata"]["error"] = transcript.error
    if sources is not None:  # which passages the answer was given (their text stays in the retriever)
        answer["metadata"]["sources"] = [{k: s.get(k) for k in ("doc_id", "chunk_id", "score")} for s in sources]
    return answer
