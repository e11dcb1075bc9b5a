"""Orchestration of a chat request that is more than a pass-through: a session's history put before it
and the exchange stored after it (:mod:`gateway.sessions`), passages from a retriever collection in its
system message and ``sources`` in its answer (:mod:`gateway.retrieval`), or both.

History, passages and the model's route are fetched concurrently; the exchange is stored before the
answer ends (before a stream's ``[DONE]``), never on the path to the first token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from chat_common import sse
from chat_common.context import access_fields, request_id
from chat_common.errors import APIError, error_response
from chat_common.protocol import ChatCompletionRequest
from gateway.answer import AnswerFilter, count_chat, metered, model_answer, replace_body
from gateway.asgi import cancel_on_disconnect
from gateway.history import HistoryClient, HistoryUnavailable
from gateway.limits import Admission
from gateway.proxy import EventStream, Proxy
from gateway.retrieval import Passages, RetrievalSpec, RetrieverClient, RetrieverUnavailable, with_passages
from gateway.sessions import Transcript, answer_message, compose, fit_history, new_exchange_id, request_messages

__all__ = ["EXTENSIONS", "Conversation", "Reframe"]

logger = logging.getLogger(__name__)

EXTENSIONS = ("session_id", "retrieval")  # body fields the gateway acts on and does not forward
Reframe = Callable[[list[dict[str, Any] | None]], bytes]  # a piece's event payloads -> the bytes to send


class Conversation:
    """One request with a session (history before it, the exchange stored after it), retrieval
    (passages in its prompt, sources in its answer), or both.

    ``filters`` are the answer filters of this request (default: the app's, ``state.answer_filters``).
    ``reframe`` turns the (filtered) OpenAI events of a streamed answer into the bytes a seed's route
    sends instead (:func:`gateway.compat.finetunellm.reframe_stream`); None sends them as they are.
    ``store_on_arrival`` stores the request's messages as soon as the history is read (so they carry the
    time they arrived) instead of with the answer; the write runs beside the model's work.
    """

    def __init__(
        self,
        state: State,
        chat: ChatCompletionRequest,
        data: dict[str, Any],
        *,
        session: str | None,
        retrieval: RetrievalSpec | None,
        query: str | None,
        reframe: Reframe | None,
        filters: Sequence[AnswerFilter] | None = None,
        store_on_arrival: bool = False,
        admission: Admission | None = None,
    ) -> None:
        self.proxy: Proxy = state.proxy
        self.history: HistoryClient = state.history
        self.retriever: RetrieverClient = state.retriever
        self.settings = state.settings
        self.filters: Sequence[AnswerFilter] = state.answer_filters if filters is None else filters
        self.chat = chat
        self.data = data
        self.session = session
        self.retrieval = retrieval
        self.query = query
        self.passages: Passages | None = None
        self.reframe = reframe
        self.transcript = Transcript()
        self.headers: list[tuple[bytes, bytes]] = []
        self.forwarded = False  # the request reached a model: there is an exchange to store
        self.stored = False
        self.store_on_arrival = store_on_arrival
        self.exchange_id = new_exchange_id()
        self.arrival: asyncio.Task[None] | None = None  # storing the request's messages, when on arrival
        self.admission = admission  # the request's rate limits (gateway.limits)

    async def run(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        """Answer the request; ``started``: its ``time.perf_counter()`` on arrival (for the metrics)."""
        status = 499
        async with cancel_on_disconnect(receive) as gone:
            try:
                body = await self._prepare()
            except APIError as exc:
                response: Response | EventStream = error_response(exc)
                if self.admission is not None:
                    metered(self.admission, response)
            else:
                self.forwarded = True
                if self.store_on_arrival and self.session is not None:
                    self.arrival = asyncio.create_task(self._append(self._request_messages(), "request"))
                response = await model_answer(self.proxy, self.chat, body, self.filters, self.admission)
            if isinstance(response, EventStream):
                response.pieces = self._observed(response.pieces)
            elif response.status_code == 200:
                payload = self.transcript.take_completion(bytes(response.body))
                if self.passages is not None:
                    payload["sources"] = self.passages.sources()
                    response = replace_body(response, payload)
                await self._store()
            await response(scope, receive, self._with_headers(send))
            status = response.status_code
        count_chat(self.proxy, self.chat.model, status, gone(), started)
        if self.admission is not None:
            self.admission.finish()  # the token charge corrected, once the answer has been sent
        if gone():
            await self._store()  # what the client was sent before it left, marked interrupted

    async def _prepare(self) -> bytes:
        """The body to forward. History and passages are fetched while the model's route is resolved;
        within the model's context the passages come first, then as much history as still fits."""
        past, hits, _ = await asyncio.gather(self._past(), self._search(), self.proxy.route(self.chat.model))
        card = self.proxy.registry.card(self.chat.model) or {}
        context = card.get("context_length")
        reserve = self.chat.token_limit or (min(512, context // 4) if context else 0)
        messages = self.data["messages"]
        if hits is not None:
            messages, self.passages = with_passages(
                messages, hits, self.settings.rag_instruction, context_length=context, reserve=reserve
            )
            access_fields()["passages"] = len(self.passages.hits)
        if past:
            past = fit_history(past, messages, context_length=context, reserve=reserve)
            messages = compose(messages, past)
        access_fields()["history_messages"] = len(past)
        body = {k: v for k, v in self.data.items() if k not in EXTENSIONS}
        body["messages"] = messages
        return orjson.dumps(body)

    async def _search(self) -> list[dict[str, Any]] | None:
        if self.retrieval is None or self.query is None:
            return None
        try:
            return await self.retriever.search(self.retrieval, self.query)
        except RetrieverUnavailable as exc:
            self.proxy.metrics.retrieval_failures.inc()
            if self.retrieval.on_error == "fail":
                raise APIError(
                    503,
                    f"The retriever service is unavailable ({exc}), so no passages can be "
                    'found. Retry later, or send "on_error": "answer" in \'retrieval\' to be '
                    "answered without them.",
                    code="retriever_unavailable",
                    headers={"Retry-After": "2"},
                ) from exc
            logger.warning("answering without retrieval", extra={"error": str(exc)})
            self.headers.append((b"x-switchboard-retrieval", b"unavailable"))
            return []

    async def _past(self) -> list[dict[str, Any]]:
        if self.session is None:
            return []
        self.headers.append((b"x-session-id", self.session.encode()))
        try:
            return await self.history.recent(self.session, 2 * self.settings.history_turns)
        except HistoryUnavailable as exc:
            self.proxy.metrics.history_failures.labels("read").inc()
            if self.settings.history_on_error == "fail":
                raise APIError(
                    503,
                    f"The history service is unavailable ({exc}), so this conversation cannot "
                    "be continued or stored. Retry later; an operator can set "
                    "GATEWAY_HISTORY_ON_ERROR=answer to answer without history meanwhile.",
                    code="history_unavailable",
                    headers={"Retry-After": "2"},
                ) from exc
            logger.warning("answering without history", extra={"session_id": self.session, "error": str(exc)})
            self.headers.append((b"x-switchboard-history", b"unavailable"))
            return []

    async def _observed(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay the stream, noting what it says; the exchange is stored before the final ``[DONE]``, so
        a client that starts its next turn as soon as a stream ends finds this one in the history."""
        async for piece in pieces:
            payloads = self.transcript.feed(piece)
            if self.reframe is not None:
                piece = self.reframe(payloads)
            if piece.endswith(sse.DONE):
                if len(piece) > len(sse.DONE):
                    yield piece[: -len(sse.DONE)]
                if self.passages is not None and self.reframe is None:
                    yield self._sources_event()
                await self._store()
                piece = sse.DONE
            yield piece

    def _sources_event(self) -> bytes:
        """The stream's last event before ``[DONE]``: chunk-shaped (no choices, like the usage chunk)."""
        assert self.passages is not None
        identity = self.transcript.identity
        return sse.event(
            {
                "id": identity.get("id"),
                "object": "chat.completion.chunk",
                "created": identity.get("created"),
                "model": identity.get("model") or self.chat.model,
                "choices": [],
                "sources": self.passages.sources(),
            }
        )

    def _with_headers(self, send: Send) -> Send:
        if not self.headers:
            return send

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.headers]
            await send(message)

        return sending

    async def _store(self) -> None:
        """Store the exchange once the answer is complete (or the client has gone), before the response
        ends: never on the path to the first token, and always before the client can ask its next turn.
        When the request's messages were stored on arrival, that write is awaited and the answer follows."""
        if self.stored or not self.forwarded or self.session is None:
            return
        self.stored = True
        sources = self.passages.sources() if self.passages is not None else None
        answer = answer_message(
            self.chat, self.transcript, exchange_id=self.exchange_id, request_id=request_id() or "", sources=sources
        )
        if self.arrival is not None:
            await self.arrival
            await self._append([answer], "answer")
        else:
            await self._append([*self._request_messages(), answer], "exchange")

    def _request_messages(self) -> list[dict[str, Any]]:
        return request_messages(self.chat, exchange_id=self.exchange_id, request_id=request_id() or "")

    async def _append(self, messages: list[dict[str, Any]], what: str) -> None:
        assert self.session is not None
        try:
            await self.history.append(self.session, messages)
        except (HistoryUnavailable, ValueError) as exc:
            self.proxy.metrics.history_failures.labels("write").inc()
            logger.error(
                f"{what} not stored", extra={"session_id": self.session, "error": str(exc), "messages": len(messages)}
            )
