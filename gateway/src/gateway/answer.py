"""A chat request's answer from its model: asked for, passed through the answer filters, counted.

:func:`model_answer` is the one place every chat answer comes from, whichever route asked (the OpenAI
route with or without a session or retrieval, and the seeds' chat routes), so it is where an answer
passes through the gateway's :class:`AnswerFilter` chain (``app.state.answer_filters``, in order;
empty by default, and then an answer goes through untouched at no cost). A filter sees the OpenAI
answer before anything else does: what a session stores and what a seed route re-frames is the
filtered answer, as the client receives it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
from starlette.responses import Response

from chat_common.answer_filter import FILTER_HEADER
from chat_common.context import access_fields
from chat_common.errors import APIError, error_response
from chat_common.protocol import ChatCompletionRequest
from gateway.limits import Admission
from gateway.proxy import EventStream, Proxy

__all__ = ["CHAT_PATH", "AnswerFilter", "PushableFilter", "count_chat", "metered", "model_answer", "replace_body"]

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"  # the model services' chat route


class AnswerFilter(Protocol):
    """Something that changes a model's answer on its way to the client (e.g. splits out reasoning).

    ``stream`` gets the relayed SSE pieces of one streamed answer with status 200 and yields what goes
    on: each piece is one or more complete events (``data: {chunk}\\n\\n``), the last ending with
    ``data: [DONE]\\n\\n``, and an error event may come before it. Per-answer state lives in the
    generator. ``completion`` gets a whole (non-streamed) 200 answer, parsed, and returns the one to
    send. Error answers are not filtered.
    """

    def stream(self, chat: ChatCompletionRequest, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]: ...

    def completion(self, chat: ChatCompletionRequest, payload: dict[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class PushableFilter(AnswerFilter, Protocol):
    """A filter that may have gone upstream with the request (a profile's, :mod:`chat_common.answer_filter`)."""

    def upstream_applied(self) -> AnswerFilter | None:
        """What the gateway still does to an answer whose replica says it applied the request's filter
        (None: nothing); a filter that was not sent returns itself."""
        ...


async def model_answer(
    proxy: Proxy,
    chat: ChatCompletionRequest,
    body: bytes,
    filters: Sequence[AnswerFilter] = (),
    admission: Admission | None = None,
) -> Response | EventStream:
    """The model's answer to ``body`` (a chat completion request for ``chat.model``) as an ASGI response,
    filtered; a failure is an error response in OpenAI's envelope, never an exception. ``admission``
    (the request's rate limits, :mod:`gateway.limits`) adds its headers and notes the answer's usage."""
    response = await _answer(proxy, chat, body, filters)
    if admission is not None:
        metered(admission, response)
    return response


def metered(admission: Admission, response: Response | EventStream, *, count_usage: bool = True) -> None:
    """Put the rate-limit headers on ``response`` and note the tokens it uses for the admission (a
    stream's as it is relayed); :meth:`Admission.finish` corrects the charge once it has been sent.
    ``count_usage`` False: none are counted (the estimate is given back)."""
    if admission.headers:
        if isinstance(response, EventStream):
            response.headers = [*response.headers, *admission.headers]
        else:
            response.raw_headers.extend(admission.headers)
    if admission.finished or not count_usage:
        return
    if isinstance(response, EventStream):
        admission.used = admission.estimate  # a stream that sends nothing used what its prompt did
        response.meter = admission
    else:
        admission.meter_whole(response.status_code, bytes(response.body))


async def _answer(
    proxy: Proxy, chat: ChatCompletionRequest, body: bytes, filters: Sequence[AnswerFilter]
) -> Response | EventStream:
    try:
        response = await proxy.call_model(chat.model, CHAT_PATH, body, stream=chat.stream)
    except APIError as exc:
        return error_response(exc)
    except Exception:
        logger.exception("unhandled error on POST %s", CHAT_PATH)
        return error_response(APIError(500, "Internal server error. The gateway log has the details."))
    if isinstance(response, EventStream):
        applied = response.filtered
    else:
        applied = FILTER_HEADER in response.headers
        if applied:
            del response.headers[FILTER_HEADER]  # between the model service and the gateway
    if not filters or response.status_code != 200:
        return response
    if applied:  # the replica applied the request's filter: only what is left of it runs here
        left = [f.upstream_applied() if isinstance(f, PushableFilter) else f for f in filters]
        filters = [f for f in left if f is not None]
        if not filters:
            return response
    if isinstance(response, EventStream):
        for answer_filter in filters:
            response.pieces = answer_filter.stream(chat, response.pieces)
        return response
    payload = orjson.loads(response.body)
    for answer_filter in filters:
        payload = answer_filter.completion(chat, payload)
    return replace_body(response, payload)


def replace_body(response: Response, payload: dict[str, Any]) -> Response:
    """``response`` with ``payload`` as its JSON body (status and passed-back headers kept)."""
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return Response(
        orjson.dumps(payload),
        status_code=response.status_code,
        headers=headers,
        media_type="application/json",
    )


def count_chat(proxy: Proxy, model: str, status: int, gone: bool, started: float) -> None:
    """Count one chat request that reached the model stage in the metrics (status 499 when the client
    left; ``started``: its ``time.perf_counter()`` on arrival) and note a departure on the access line."""
    if gone:
        status = 499
        access_fields()["client_gone"] = True
    proxy.metrics.chat_request(proxy.model_label(model), status, time.perf_counter() - started)
