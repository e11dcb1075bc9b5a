"""Retrieval-augmented generation: passages from a retriever collection put into the prompt, and the
sources returned with the answer.

A chat request asks for retrieval with the ``retrieval`` body field (extension; the OpenAI SDK sends
it with ``extra_body``)::

    "retrieval": {"collection": "it-support", "top_k": 4, "filter": {"category": "vpn"},
                  "score_threshold": 0.2, "on_error": "fail"}

(or just ``"retrieval": "it-support"``). The query is the request's last user message. The passages,
numbered, go into the system message within the model's context budget (lowest-scoring dropped first);
the answer carries them as ``sources``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chat_common.errors import APIError, validation_message
from chat_common.protocol import ChatCompletionRequest
from gateway.service_client import JsonService, ServiceRefused, ServiceUnavailable
from gateway.tokens import BYTES_PER_TOKEN, estimate_messages, estimate_tokens

__all__ = [
    "Passages",
    "RetrievalSpec",
    "RetrieverClient",
    "RetrieverUnavailable",
    "augment",
    "query_of",
    "retrieval_of",
    "with_passages",
]

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_PASSAGE_TOKENS = 12  # the "[n] title" line and spacing around a passage


class RetrievalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(pattern=COLLECTION_PATTERN)
    top_k: int = Field(4, ge=1, le=20)
    filter: dict[str, Any] | None = None
    score_threshold: float | None = Field(None, ge=-1.0, le=1.0)
    on_error: Literal["fail", "answer"] = "fail"


def retrieval_of(chat: ChatCompletionRequest) -> RetrievalSpec | None:
    """The request's ``retrieval`` extension, or None; 400 naming the bad field when malformed."""
    value = (chat.model_extra or {}).get("retrieval")
    if value is None:
        return None
    if isinstance(value, str):
        value = {"collection": value}
    try:
        return RetrievalSpec.model_validate(value)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_url=False)))
        param = f"retrieval.{param}" if param else "retrieval"
        raise APIError(
            400,
            message.replace("Invalid request: '", "Invalid request: 'retrieval.", 1)
            + " ('retrieval' is an object: collection, top_k 1-20, filter, score_threshold, on_error).",
            param=param,
            code="invalid_value",
        ) from None


def query_of(chat: ChatCompletionRequest) -> str:
    for message in reversed(chat.messages):
        if message.role == "user" and message.text.strip():
            return message.text
    raise APIError(
        400,
        "Retrieval needs a user message to search for: the request has none with text.",
        param="messages",
        code="invalid_value",
    )


class RetrieverUnavailable(ServiceUnavailable):
    """The retriever could not be reached or failed."""


class RetrieverClient(JsonService):
    unavailable = RetrieverUnavailable
    label = "retriever"

    async def search(self, spec: RetrievalSpec, query: str) -> list[dict[str, Any]]:
        """The collection's hits for ``query``, best first. A refused search (unknown collection, bad
        filter) is an :class:`APIError` for the client, with the retriever's message."""
        body: dict[str, Any] = {"query": query, "top_k": spec.top_k}
        if spec.filter is not None:
            body["filter"] = spec.filter
        if spec.score_threshold is not None:
            body["score_threshold"] = spec.score_threshold
        try:
            data = await self.call("POST", f"/v1/collections/{spec.collection}/search", json=body)
        except ServiceRefused as exc:
            status = 404 if exc.status == 404 else 400
            raise APIError(
                status, f"Retrieval failed: {exc.message}", param="retrieval", code=exc.code or "retrieval_refused"
            ) from None
        return list(data["data"])

    async def embeddings(self, request: dict[str, Any]) -> dict[str, Any]:
        """The retriever's answer to an OpenAI embeddings request; a refused one (unknown model, bad input)
        is an :class:`APIError` with the retriever's status, message, code and param."""
        try:
            return await self.call("POST", "/v1/embeddings", json=request)
        except ServiceRefused as exc:
            raise APIError(exc.status, exc.message, param=exc.param, code=exc.code) from None

    async def collection(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.call("GET", f"/v1/collections/{name}")
        except ServiceRefused:
            return None


class Passages:
    """The hits that made it into the prompt, numbered from 1 in the order given."""

    def __init__(self, hits: list[dict[str, Any]]) -> None:
        self.hits = hits

    @classmethod
    def fitting(cls, hits: list[dict[str, Any]], budget: int) -> Passages:
        """The best hits whose passages fit ``budget`` tokens; the first is cut to fit when alone it does not."""
        kept: list[dict[str, Any]] = []
        used = 0
        for hit in hits:
            cost = estimate_tokens(_passage_text(hit)) + _PASSAGE_TOKENS
            if used + cost > budget:
                if not kept and budget > 2 * _PASSAGE_TOKENS:
                    room = (budget - _PASSAGE_TOKENS) * BYTES_PER_TOKEN
                    text = hit["text"].encode()[:room].decode(errors="ignore")
                    kept.append({**hit, "text": _cut_at_word(text)})
                break
            kept.append(hit)
            used += cost
        return cls(kept)

    def context(self) -> str:
        """The numbered passages as they go into the prompt."""
        return "\n\n".join(f"[{i}] {_passage_text(hit)}" for i, hit in enumerate(self.hits, 1))

    def sources(self) -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "doc_id": h.get("doc_id"),
                "chunk_id": h.get("chunk_id"),
                "title": h.get("title"),
                "source": h.get("source"),
                "score": h.get("score"),
                "metadata": h.get("metadata") or {},
                "text": h.get("text"),
            }
            for i, h in enumerate(self.hits, 1)
        ]


def _passage_text(hit: dict[str, Any]) -> str:
    title = hit.get("title")
    return f"{title}\n{hit['text']}" if title else str(hit["text"])


def _cut_at_word(text: str) -> str:
    cut = re.match(r"(?s)^(.*\S)\s+\S*$", text)
    return (cut.group(1) if cut else text) + " …"


def with_passages(
    messages: list[dict[str, Any]],
    hits: list[dict[str, Any]],
    instruction: str,
    *,
    context_length: int | None,
    reserve: int,
) -> tuple[list[dict[str, Any]], Passages]:
    """``messages`` with as many of ``hits`` as fit the model's context (``reserve`` tokens kept for the
    answer; everything when the context length is unknown), and those passages."""
    if context_length is None:
        passages = Passages(hits)
    else:
        budget = context_length - reserve - estimate_messages([*messages, {"content": instruction}])
        passages = Passages.fitting(hits, budget)
    return augment(messages, passages, instruction), passages


def augment(messages: list[dict[str, Any]], passages: Passages, instruction: str) -> list[dict[str, Any]]:
    """``messages`` with the passages in the system message: appended to the request's last system
    message, or in a new one at the front (chat templates that allow one system message still work)."""
    if not passages.hits:
        block = instruction + "\n\n(No passage was found for this question.)"
    else:
        block = instruction + "\n\n" + passages.context()
    out = [dict(m) for m in messages]
    systems = [i for i, m in enumerate(out) if m.get("role") in ("system", "developer")]
    if systems and isinstance(out[systems[-1]].get("content"), str):
        last = out[systems[-1]]
        last["content"] = f"{last['content']}\n\n{block}"
        return out
    index = systems[-1] + 1 if systems else 0
    return [*out[:index], {"role": "system", "content": block}, *out[index:]]
