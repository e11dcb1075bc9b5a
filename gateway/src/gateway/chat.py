"""The chat routes, answered in front of FastAPI's routing stack: the gateway's hot path.

``POST /v1/chat/completions`` (OpenAI), and the seeds' chat routes: ``POST /chat/completions`` (the
AlterEgo backend's name for the same route, seed 004) and ``POST /chat`` (the FineTuneLLM backend's
streaming route, seed 003, translated by :mod:`gateway.compat.finetunellm`) and ``POST /v1/chatqna``
(the ChatQnA backend's, seed 001, :mod:`gateway.compat.chatqna`). A request for a profile (persona,
:mod:`gateway.profiles`) is rewritten for it and its answer filtered (:mod:`gateway.profile_filter`).
Every other request goes on to the FastAPI app. A body is validated (bad input never reaches a model)
and sent to a replica of the service that owns the model; the answer is relayed as it comes
(:mod:`gateway.answer`). A plain request goes upstream unchanged; one with a session or retrieval is orchestrated by
:class:`gateway.conversation.Conversation`. A client that disconnects cancels the work and closes the
upstream request. Errors are rendered in OpenAI's envelope.

Skipping FastAPI's per-request machinery (telemetry probes, body-limit and exception middleware,
routing, dependency solving) is worth about a third of the streaming throughput (``bench/RESULTS.md``).
"""

from __future__ import annotations

import time

import orjson
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from chat_common.errors import APIError, error_response
from chat_common.protocol import ChatCompletionRequest
from chat_common.requests import chat_request, json_object
from gateway.affinity import set_affinity
from gateway.answer import AnswerFilter, count_chat, metered, model_answer
from gateway.asgi import cancel_on_disconnect, read_body
from gateway.auth import allow_model
from gateway.cache import subject_of, wants_cache
from gateway.compat import alterego, chatqna, finetunellm
from gateway.conversation import Conversation, Reframe
from gateway.limits import Admission, admit_chat
from gateway.profile_filter import ProfileFilter
from gateway.profile_select import select_profile
from gateway.proxy import Proxy
from gateway.retrieval import query_of, retrieval_of
from gateway.sessions import session_id_of

__all__ = ["CHAT_PATHS", "ChatRoutes"]

OPENAI_PATH = "/v1/chat/completions"
CHAT_PATHS = (OPENAI_PATH, alterego.CHAT_PATH, finetunellm.CHAT_PATH, chatqna.CHAT_PATH)


class ChatRoutes:
    """ASGI app: the chat routes, and ``app`` (the FastAPI app) for every other request."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in CHAT_PATHS:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await error_response(APIError(405, f"Use POST for {path}.", headers={"Allow": "POST"}))(
                scope, receive, send
            )
        else:
            await self._chat(scope, receive, send)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        reframe: Reframe | None = None
        try:
            body = await read_body(scope, receive, self.state.settings.max_body_bytes)
            filters: list[AnswerFilter] = list(self.state.answer_filters)
            wants = False  # the response cache (FineTuneLLM's route always has a session: never cached)
            answer_as: str | None = None
            if scope["path"] == finetunellm.CHAT_PATH:
                settings = self.state.settings
                chat = finetunellm.chat_request(body, settings.finetune_model, settings.finetune_sampling)
                data, reframe = chat.model_dump(exclude_unset=True), finetunellm.reframe_stream
                allow_model(scope, chat.model)
            else:
                data = json_object(body, "with 'model' and 'messages'")
                if scope["path"] == chatqna.CHAT_PATH:
                    profile, data = chatqna.chat_data(
                        data, self.state.settings, self.state.profiles, self.state.proxy.registry
                    )
                    answer_as = chatqna.ANSWER_MODEL
                else:
                    profile, data = select_profile(self.state.profiles, data, scope["headers"])
                    answer_as = profile.id if profile is not None else None
                chat = chat_request(data)
                # The key's allow-list names what clients name: a profile (virtual model) or a model.
                allow_model(scope, profile.id if profile is not None else chat.model)
                wants = wants_cache(data, scope["headers"], profile is not None and profile.cache)
                if answer_as is not None:
                    # The profile's filter is the first: it shapes the model's own answer, upstream or here.
                    profile_filter = ProfileFilter(profile, answer_as, self.state.proxy.metrics)
                    data = profile_filter.request(data, self.state.proxy.registry)
                    body = orjson.dumps(data)
                    filters.insert(0, profile_filter)
            session = session_id_of(chat, scope["headers"])  # always one on FineTuneLLM's route
            set_affinity(session)  # a session's requests go to its own replica (its prompt cache)
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
            cache_key = (
                self.state.cache.key(chat, data, subject=subject_of(scope), route=scope["path"], answer_as=answer_as)
                if wants and session is None and retrieval is None
                else None
            )
            # the rate limits charged and the cache entry read, in one call to Redis
            admission = await admit_chat(self.state, scope, chat.model, data["messages"], cache_key)
        except ClientDisconnect:
            return
        except APIError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if session is None and retrieval is None:
            await self._relay_unchanged(scope, receive, send, chat, body, filters, admission, cache_key, started)
        else:
            await Conversation(
                self.state,
                chat,
                data,
                session=session,
                retrieval=retrieval,
                query=query,
                reframe=reframe,
                filters=filters,
                store_on_arrival=reframe is not None,  # FineTuneLLM stored a prompt when it came
                admission=admission,
            ).run(scope, receive, send, started)

    async def _relay_unchanged(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        chat: ChatCompletionRequest,
        body: bytes,
        filters: list[AnswerFilter],
        admission: Admission,
        cache_key: bytes | None,
        started: float,
    ) -> None:
        """Send the body upstream (the client's as it came, unless a profile rewrote it) and relay the
        (filtered) answer; with a ``cache_key``, the cached answer (read with the admission) instead, or the
        answer stored once it has been sent."""
        proxy: Proxy = self.state.proxy
        status = 499
        async with cancel_on_disconnect(receive) as gone:
            response = None if cache_key is None else self.state.cache.replay(admission)
            if response is None:
                response = await model_answer(proxy, chat, body, filters, admission)
                if cache_key is not None:
                    self.state.cache.recording(admission, cache_key, response)
            else:  # a hit counts as a request; its token estimate is given back (no model worked)
                metered(admission, response, count_usage=False)
            await response(scope, receive, send)
            status = response.status_code
        count_chat(proxy, chat.model, status, gone(), started)
        admission.finish()  # the token correction and the answer to cache, queued for the ledger
