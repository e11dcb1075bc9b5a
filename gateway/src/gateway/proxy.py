"""Forwarding a request to the replica that owns its model, and the response back, unchanged.

Streams pass through byte for byte as they arrive: whatever the upstream socket delivered is written
to the client in one piece (events are neither split nor re-framed). Only an incomplete SSE event is
held back (it is useless to a client until its blank line arrives), so that a stream cut short
upstream can be closed with a well-formed error event and ``data: [DONE]`` instead of half an event,
and never with a ``finish_reason`` the model did not produce.

The upstream client is aiohttp: its C HTTP parser and its "everything buffered so far" reads keep the
per-chunk cost low enough for the gateway to relay several thousand streams a second on one core
(``bench/RESULTS.md`` has the comparison with httpx).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chat_common import sse
from chat_common.answer_filter import FILTER_HEADER
from chat_common.context import REQUEST_ID_HEADER, access_fields, request_id
from chat_common.errors import APIError
from gateway import affinity
from gateway.metrics import OTHER_MODEL, GatewayMetrics
from gateway.registry import Registry, Replica, describe_error
from gateway.tokens import usage_total

__all__ = ["EventStream", "Meter", "Proxy"]

logger = logging.getLogger(__name__)

_PASSED_BACK = ("content-type", "retry-after", FILTER_HEADER)
_TEXT_DELTA = b'"delta":{"content":'  # a chunk with text (the first chunk of a stream has a role first)
_USAGE = b'"usage":{'

# Nothing reached the replica: another replica may answer.
_UNREACHABLE = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# Further replicas asked after a timeout or a 5xx answer (a refused connection or a 429 always moves on).
_RETRIES = 1


class Proxy:
    def __init__(
        self, registry: Registry, session: aiohttp.ClientSession, metrics: GatewayMetrics, read_timeout_s: float
    ) -> None:
        self.registry = registry
        self.session = session
        self.metrics = metrics
        self.read_timeout_s = read_timeout_s

    async def route(self, model: str) -> list[Replica]:
        replicas = self.registry.candidates(model)
        if not replicas:
            await self.registry.refresh_if_stale()
            replicas = self.registry.candidates(model)
        if not replicas and (cooling := self.registry.open_circuits(model)):
            wait = max(1, math.ceil(min(r.breaker.retry_in_s() for r in cooling)))
            raise APIError(
                503,
                f"Every replica serving '{model}' failed repeatedly and is out for a cool-down "
                f"(GATEWAY_BREAKER_COOLDOWN_S); retry in {wait}s.",
                code="upstream_unavailable",
                headers={"Retry-After": str(wait)},
            )
        if not replicas:
            known = self.registry.model_ids
            listing = ", ".join(known) if known else "none (no model service is reachable)"
            raise APIError(
                404,
                f"The model '{model}' does not exist. Available models: {listing}.",
                param="model",
                code="model_not_found",
            )
        return replicas

    def model_label(self, model: str) -> str:
        """``model`` as a metrics label: itself when the gateway routes it, else ``other`` (bounded series)."""
        return model if self.registry.card(model) is not None else OTHER_MODEL

    async def call_model(self, model: str, path: str, body: bytes, *, stream: bool) -> Response | EventStream:
        """POST ``body`` to ``path`` on a replica serving ``model``; its answer as an ASGI response to send on
        (an :class:`EventStream` when ``stream`` and the replica streams), or an :class:`APIError` 503/404.
        A cancellation (the client left) drops the upstream request.

        The first replica is :meth:`Registry.candidates`' first; each further one is chosen when it is needed,
        among the replicas routable *then* and not yet tried (a breaker that opened meanwhile, from this or
        any concurrent request, is respected): the next one when a connection is refused (any number of
        times), when a replica answers 429 (saturated), and once when one times out or answers 5xx before
        its answer started (``_RETRIES``); when no replica is left, the last answer is passed on as it is.
        Each outcome is reported to the replica's circuit breaker (5xx, timeouts, refused connections and
        streams cut short are failures). A request with a session counts as an affinity hit or fallback
        (:meth:`Registry.home`) on the replica whose answer is passed on."""
        access_fields()["model"] = model
        started = time.perf_counter()
        first = (await self.route(model))[0]
        service = first.service
        replica: Replica | None = first
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id() or ""}
        failures: list[str] = []
        tried: set[int] = set()
        retries = _RETRIES
        while replica is not None:
            tried.add(id(replica))
            release = _claim(replica)
            try:
                upstream = await self._post(replica.url + path, body, headers)
            except _UNREACHABLE as exc:
                release()
                failures.append(f"{replica.url}: {describe_error(exc)}")
                self.metrics.upstream_failures.labels(replica.service, "connect").inc()
                replica.breaker.failure()
                self.registry.mark_unreachable(replica, describe_error(exc))
                replica = self._next(model, tried)
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:  # after an answer was asked for: retried once
                release()
                timed_out = isinstance(exc, TimeoutError)  # aiohttp's socket timeouts are TimeoutErrors too
                self.metrics.upstream_failures.labels(replica.service, "timeout" if timed_out else "protocol").inc()
                replica.breaker.failure()
                what = f"no answer within {self.read_timeout_s:g}s" if timed_out else describe_error(exc)
                following = self._next(model, tried) if retries else None
                if following is not None:
                    retries -= 1
                    failures.append(f"{replica.url}: {what}")
                    replica = following
                    continue
                if timed_out:
                    raise APIError(
                        503,
                        f"The service '{replica.service}' ({replica.url}) did not answer within "
                        f"{self.read_timeout_s:g}s (GATEWAY_READ_TIMEOUT_S).",
                        code="upstream_timeout",
                    ) from exc
                raise APIError(
                    503,
                    f"The service '{replica.service}' ({replica.url}) failed: {what}.",
                    code="upstream_error",
                ) from exc
            except BaseException:
                release()
                raise
            try:
                if upstream.status >= 500:
                    self.metrics.upstream_failures.labels(replica.service, "status_5xx").inc()
                    replica.breaker.failure()
                else:
                    replica.breaker.success()  # a 429 too: the replica is alive, only busy
                following = None
                if upstream.status == 429 or (upstream.status >= 500 and retries):
                    following = self._next(model, tried)
                if following is not None:
                    if upstream.status >= 500:
                        retries -= 1
                    failures.append(f"{replica.url}: HTTP {upstream.status}")
                    await upstream.read()  # the connection goes back to the pool
                    upstream.release()
                    release()
                    replica = following
                    continue
                self._count_affinity(model, replica)
                if stream:
                    return await self._stream(replica, upstream, release, model, started)
                try:
                    response = await _read_whole(upstream)
                finally:
                    release()
                if response.status_code == 200:
                    self._count_usage(model, bytes(response.body))
                return response
            except BaseException:
                upstream.close()
                release()
                raise
        raise APIError(
            503,
            f"The service '{service}' that serves '{model}' is unavailable "
            f"({'; '.join(failures)}). Check that it is running and reachable from the gateway.",
            code="upstream_unavailable",
        )

    def _next(self, model: str, tried: set[int]) -> Replica | None:
        """The replica to ask next: the first of those routable now that this request has not tried."""
        return next((r for r in self.registry.candidates(model) if id(r) not in tried), None)

    def _count_affinity(self, model: str, replica: Replica) -> None:
        key = affinity.affinity_key()
        if key is not None:
            home = self.registry.home(model, key)
            self.metrics.affinity(self.model_label(model), "hit" if replica is home else "fallback")

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST, asking once more on a fresh connection when a pooled one turns out to be closed."""
        try:
            return await self.session.post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError:
            raise  # no connection could be made: the caller tries another replica
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # A pooled keep-alive connection the replica had closed (it restarted, or its idle timeout
            # passed) fails before any answer starts. The client has been sent nothing and the replica
            # stops work whose connection is gone, so asking once more on a fresh connection is safe.
            return await self.session.post(url, data=body, headers=headers)

    async def _stream(
        self,
        replica: Replica,
        upstream: aiohttp.ClientResponse,
        release: Callable[[], None],
        model: str,
        started: float,
    ) -> Response | EventStream:
        if upstream.status != 200 or upstream.content_type != "text/event-stream":
            try:
                return await _read_whole(upstream)  # an error answer: passed on as it is
            finally:
                release()

        def close() -> None:
            # Closing (not releasing) drops the connection, which is how the replica learns that the
            # client is gone; after a complete stream the connection goes back to the pool instead.
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()
            release()

        def note_usage(total: int) -> None:  # called while relaying: ``stream`` exists by then
            stream.usage = total

        stream = EventStream(self._relay(replica, upstream, model, started, note_usage), on_close=close)
        stream.filtered = FILTER_HEADER in upstream.headers
        return stream

    async def _relay(
        self,
        replica: Replica,
        upstream: aiohttp.ClientResponse,
        model: str,
        started: float,
        note_usage: Callable[[int], None],
    ) -> AsyncIterator[bytes]:
        """The upstream's complete events as they arrive. Notes the time to the first text and the final
        usage for the metrics by looking for them in the bytes (the events are not parsed), and hands the
        usage's total tokens to ``note_usage`` (the rate limits' correction)."""
        held = b""
        finished = False
        first_text = True
        problem = "the stream ended without [DONE]"
        try:
            async for chunk in upstream.content.iter_any():
                data = held + chunk if held else chunk
                end = data.rfind(sse.EVENT_END)
                if end < 0:
                    held = data
                    continue
                end += len(sse.EVENT_END)
                complete, held = data[:end], data[end:]
                if first_text and _TEXT_DELTA in complete:
                    first_text = False
                    self.metrics.first_token(model, time.perf_counter() - started)
                if _USAGE in complete and (total := self._count_stream_usage(model, complete)) is not None:
                    note_usage(total)
                finished = complete.endswith(sse.DONE)
                yield complete
        except (TimeoutError, aiohttp.SocketTimeoutError):
            problem = f"no data for {self.read_timeout_s:g}s (GATEWAY_READ_TIMEOUT_S)"
        except aiohttp.ClientError as exc:
            problem = describe_error(exc)
        if not finished:
            self.metrics.upstream_failures.labels(replica.service, "stream_cut").inc()
            replica.breaker.failure()
            logger.warning(
                "upstream stream cut short",
                extra={"upstream_service": replica.service, "url": replica.url, "error": problem},
            )
            yield sse.error_event(
                f"The service '{replica.service}' stopped the stream early: {problem}.",
                type="upstream_error",
                code="stream_interrupted",
            )
            yield sse.DONE

    def _count_usage(self, model: str, body: bytes) -> int | None:
        """Count the tokens of a whole JSON answer's ``usage``; the total it gives (:func:`usage_total`)."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        usage = payload.get("usage")
        self.metrics.usage(model, usage)
        return usage_total(usage)

    def _count_stream_usage(self, model: str, events: bytes) -> int | None:
        """Count the tokens of the (last) usage chunk among ``events``, complete SSE events; its total."""
        at = events.rfind(_USAGE)
        if at < 0:
            return None
        start = events.rfind(b"\ndata: ", 0, at) + 1  # 0 when the usage event is the first one
        if not events.startswith(b"data: ", start):
            return None
        end = events.find(b"\n", at)
        return self._count_usage(model, events[start + 6 : end])


class Meter(Protocol):
    """What watches a relayed stream (:class:`gateway.limits.Admission`)."""

    def piece(self, piece: bytes) -> None:
        """Called with each piece just before it is sent."""

    def relayed(self, usage: int | None) -> None:
        """Called once the last piece has been sent, with the total tokens of the stream's usage chunk."""


class EventStream:
    """The relayed SSE response: headers, then each piece as it comes; ``on_close`` runs however it ends.

    Lighter than Starlette's ``StreamingResponse`` (no task group per response): a client that leaves
    is noticed by :func:`gateway.asgi.cancel_on_disconnect`, which cancels the relay.
    """

    _HEADERS = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    status_code = 200

    def __init__(self, pieces: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.pieces = pieces
        self.on_close = on_close
        self.headers = self._HEADERS  # replaced (never changed in place) to add headers
        self.filtered = False  # the replica applied the request's answer filter (chat_common.answer_filter)
        self.meter: Meter | None = None  # sees each piece as it is sent (the rate limits, the cache)
        self.usage: int | None = None  # the upstream's usage chunk's total tokens, once relayed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        meter = self.meter
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            async for piece in self.pieces:
                if meter is not None:
                    meter.piece(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if meter is not None:
                meter.relayed(self.usage)
        finally:
            self.on_close()


def _claim(replica: Replica) -> Callable[[], None]:
    """Count a request against the replica; the returned callable gives it back, once."""
    replica.in_flight += 1
    replica.breaker.begin()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            replica.in_flight -= 1

    return release


async def _read_whole(upstream: aiohttp.ClientResponse) -> Response:
    """The upstream answer read to its end, as a response with its status and passed-back headers."""
    try:
        content = await upstream.read()
    except BaseException:  # cut short, or cancelled because the client left:
        upstream.close()  # dropping the connection is what stops the generation upstream
        raise
    return Response(content, status_code=upstream.status, headers=_passed_back(upstream))


def _passed_back(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {name: upstream.headers[name] for name in _PASSED_BACK if name in upstream.headers}
