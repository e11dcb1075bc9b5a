"""The chat routes, answered in front of FastAPI's routing stack: the gateway's hot path.

``POST /v1/chat/completions`` (OpenAI) and ``POST /chat`` (the FineTuneLLM backend's streaming route,
seed 003). Every other request goes on to the FastAPI app. A body is validated (bad input never reaches
a model) and forwarded to a replica of the service that owns the model; the answer is relayed as it
comes. A plain request goes upstream unchanged. With a session, the session's history is put before it
and the exchange is stored after it (:mod:`gateway.sessions`); with retrieval, passages from a
retriever collection go into its system message and the answer carries them as ``sources``
(:mod:`gateway.retrieval`). A client that disconnects cancels the work and closes the upstream
request. Errors are rendered in OpenAI's envelope.

Skipping FastAPI's per-request machinery (telemetry probes, body-limit and exception middleware,
routing, dependency solving) is worth about a third of the streaming throughput (``bench/RESULTS.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_common import sse
from chat_common.context import access_fields, request_id
from chat_common.errors import APIError, error_response
from chat_common.protocol import ChatCompletionRequest
from chat_common.requests import chat_request, json_object
from gateway.asgi import cancel_on_disconnect, read_body
from gateway.history import HistoryClient, HistoryUnavailable
from gateway.proxy import EventStream, Proxy
from gateway.retrieval import (
    Passages,
    RetrievalSpec,
    RetrieverClient,
    RetrieverUnavailable,
    query_of,
    retrieval_of,
    with_passages,
)
from gateway.sessions import Transcript, compose, exchange, fit_history, session_id_of

__all__ = ["ChatRoutes"]

logger = logging.getLogger(__name__)

OPENAI_PATH = "/v1/chat/completions"
ALTEREGO_PATH = "/chat/completions"  # the AlterEgo backend's name for the same route (seed 004)
FINETUNE_PATH = "/chat"

EXTENSIONS = ("session_id", "retrieval")  # body fields the gateway acts on and does not forward
Reframe = Callable[[list[dict[str, Any] | None]], bytes]  # a piece's event payloads -> the bytes to send


class ChatRoutes:
    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in (OPENAI_PATH, ALTEREGO_PATH, FINETUNE_PATH):
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await error_response(APIError(405, f"Use POST for {path}.", headers={"Allow": "POST"}))(
                scope, receive, send
            )
        else:
            await self._chat(scope, receive, send)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(scope, receive, self.state.settings.max_body_bytes)
            if scope["path"] != FINETUNE_PATH:
                data = json_object(body, "with 'model' and 'messages'")
                chat, reframe = chat_request(data), None
            else:
                chat, reframe = _finetune_request(body, self.state.settings.finetune_model), _finetune_stream
                data = chat.model_dump(exclude_unset=True)
            session = session_id_of(chat, scope["headers"])  # always one on FineTuneLLM's route
            if session is not None and self.state.history is None:
                raise APIError(
                    400,
                    "This gateway keeps no conversations (GATEWAY_HISTORY_URL is empty): send "
                    "the whole conversation in 'messages' instead of a session id.",
                    param="session_id",
                    code="sessions_disabled",
                )
            retrieval = retrieval_of(chat)
            if retrieval is not None and self.state.retriever is None:
                raise APIError(
                    400,
                    "This gateway has no retriever (GATEWAY_RETRIEVER_URL is empty): send the "
                    "request without 'retrieval'.",
                    param="retrieval",
                    code="retrieval_disabled",
                )
            query = query_of(chat) if retrieval is not None else None
        except ClientDisconnect:
            return
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if session is None and retrieval is None:
            await self._forward(scope, receive, send, chat, body)  # the body goes upstream unchanged
        else:
            await Conversation(
                self.state, chat, data, session=session, retrieval=retrieval, query=query, reframe=reframe
            ).run(scope, receive, send)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, chat: ChatCompletionRequest, body: bytes
    ) -> None:
        proxy: Proxy = self.state.proxy
        status = 499
        async with cancel_on_disconnect(receive) as gone:
            response = await _forwarded(proxy, chat, body)
            await response(scope, receive, send)
            status = response.status_code
        _count(proxy, chat.model, status, gone())


class Conversation:
    """One request with a session (history before it, the exchange stored after it), retrieval
    (passages in its prompt, sources in its answer), or both."""

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
    ) -> None:
        self.proxy: Proxy = state.proxy
        self.history: HistoryClient = state.history
        self.retriever: RetrieverClient = state.retriever
        self.settings = state.settings
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

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 499
        async with cancel_on_disconnect(receive) as gone:
            try:
                body = await self._prepare()
            except APIError as exc:
                response: Response | EventStream = error_response(exc)
            else:
                self.forwarded = True
                response = await _forwarded(self.proxy, self.chat, body)
            if isinstance(response, EventStream):
                response.pieces = self._observed(response.pieces)
            elif response.status_code == 200:
                payload = self.transcript.take_completion(bytes(response.body))
                if self.passages is not None:
                    response = _with_sources(response, payload, self.passages)
                await self._store()
            await response(scope, receive, self._with_headers(send))
            status = response.status_code
        _count(self.proxy, self.chat.model, status, gone())
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
        ends: never on the path to the first token, and always before the client can ask its next turn."""
        if self.stored or not self.forwarded or self.session is None:
            return
        self.stored = True
        sources = self.passages.sources() if self.passages is not None else None
        messages = exchange(self.chat, self.transcript, request_id=request_id() or "", sources=sources)
        try:
            await self.history.append(self.session, messages)
        except (HistoryUnavailable, ValueError) as exc:
            self.proxy.metrics.history_failures.labels("write").inc()
            logger.error(
                "exchange not stored", extra={"session_id": self.session, "error": str(exc), "messages": len(messages)}
            )


async def _forwarded(proxy: Proxy, chat: ChatCompletionRequest, body: bytes) -> Response | EventStream:
    try:
        return await proxy.forward(chat.model, OPENAI_PATH, body, stream=chat.stream)
    except APIError as exc:
        return error_response(exc)
    except Exception:
        logger.exception("unhandled error on POST %s", OPENAI_PATH)
        return error_response(APIError(500, "Internal server error. The gateway log has the details."))


def _with_sources(response: Response, payload: dict[str, Any], passages: Passages) -> Response:
    payload["sources"] = passages.sources()
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return Response(
        orjson.dumps(payload), status_code=response.status_code, headers=headers, media_type="application/json"
    )


def _count(proxy: Proxy, model: str, status: int, gone: bool) -> None:
    if gone:
        status = 499
        access_fields()["client_gone"] = True
    proxy.metrics.requests.labels(model, str(status)).inc()


def _finetune_request(body: bytes, model: str) -> ChatCompletionRequest:
    """FineTuneLLM's ``{"prompt", "session_id"}`` (session "default" when absent) as a streamed chat request."""
    data = json_object(body, "with a 'prompt' (and optionally a 'session_id')")
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise APIError(
            400,
            "Send a JSON object with a non-empty 'prompt' string (and optionally 'session_id').",
            param="prompt",
            code="invalid_value",
        )
    return chat_request(
        {
            "model": model,
            "messages": [{"role": "user", "content": data["prompt"]}],
            "stream": True,
            "session_id": data.get("session_id") or "default",
        }
    )


def _finetune_stream(payloads: list[dict[str, Any] | None]) -> bytes:
    """OpenAI chunk events as FineTuneLLM's stream: ``data: {"token": "..."}`` per piece of text; an error
    event and ``data: [DONE]`` are passed on."""
    out: list[bytes] = []
    for payload in payloads:
        if payload is None:
            out.append(sse.DONE)
        elif "error" in payload:
            out.append(sse.event(payload))
        else:
            out.extend(
                sse.event({"token": text})
                for choice in payload.get("choices") or ()
                if (text := (choice.get("delta") or {}).get("content"))
            )
    return b"".join(out)
