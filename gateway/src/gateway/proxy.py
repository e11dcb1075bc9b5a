"""Forwarding a request to the replica that owns its model, and the response back, unchanged.

Streams pass through byte for byte as they arrive. Only an incomplete SSE event is held back (it is
useless to a client until its blank line arrives), so that a stream cut short upstream can be closed
with a well-formed error event and ``data: [DONE]`` instead of half an event — and never with a
``finish_reason`` the model did not produce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2 as httpx
from starlette.responses import Response

from chat_common import sse
from chat_common.context import REQUEST_ID_HEADER, access_fields, request_id
from chat_common.errors import APIError
from chat_common.sse import EventStreamResponse
from gateway.metrics import GatewayMetrics
from gateway.registry import Registry, Replica, describe_error

__all__ = ["Proxy"]

logger = logging.getLogger(__name__)

_PASSED_BACK = ("content-type", "retry-after")
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout)  # nothing reached the replica: try another


class Proxy:
    def __init__(self, registry: Registry, client: httpx.AsyncClient, metrics: GatewayMetrics,
                 read_timeout_s: float) -> None:
        self.registry = registry
        self.client = client
        self.metrics = metrics
        self.read_timeout_s = read_timeout_s

    async def route(self, model: str) -> list[Replica]:
        replicas = self.registry.candidates(model)
        if not replicas:
            await self.registry.refresh_if_stale()
            replicas = self.registry.candidates(model)
        if not replicas:
            known = self.registry.model_ids
            listing = ", ".join(known) if known else "none (no model service is reachable)"
            raise APIError(404, f"The model '{model}' does not exist. Available models: {listing}.",
                           param="model", code="model_not_found")
        return replicas

    async def forward(self, model: str, path: str, body: bytes, *, stream: bool,
                      disconnected: Callable[[], Awaitable[None]]) -> Response:
        access_fields()["model"] = model
        replicas = await self.route(model)
        headers = {"content-type": "application/json", REQUEST_ID_HEADER: request_id() or ""}
        failures: list[str] = []
        for replica in replicas:
            request = self.client.build_request("POST", replica.url + path, content=body, headers=headers)
            release = _claim(replica)
            try:
                if stream:
                    return await self._stream(replica, request, release)
                try:
                    return await self._complete(request, disconnected)
                finally:
                    release()
            except _RETRYABLE as exc:
                release()
                failures.append(f"{replica.url}: {describe_error(exc)}")
                self.metrics.upstream_failures.labels(replica.service, "connect").inc()
                self.registry.mark_unreachable(replica, describe_error(exc))
            except httpx.TimeoutException as exc:
                release()
                self.metrics.upstream_failures.labels(replica.service, "timeout").inc()
                raise APIError(503, f"The service '{replica.service}' ({replica.url}) did not answer within "
                               f"{self.read_timeout_s:g}s (GATEWAY_READ_TIMEOUT_S).",
                               code="upstream_timeout") from exc
            except httpx.HTTPError as exc:
                release()
                self.metrics.upstream_failures.labels(replica.service, "protocol").inc()
                raise APIError(503, f"The service '{replica.service}' ({replica.url}) failed: {describe_error(exc)}.",
                               code="upstream_error") from exc
            except BaseException:
                release()
                raise
        service = replicas[0].service
        raise APIError(503, f"The service '{service}' that serves '{model}' is unavailable "
                       f"({'; '.join(failures)}). Check that it is running and reachable from the gateway.",
                       code="upstream_unavailable")

    async def _complete(self, request: httpx.Request, disconnected: Callable[[], Awaitable[None]]) -> Response:
        sending = asyncio.ensure_future(self.client.send(request))
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait((sending, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():  # the client left: closing the upstream request stops the generation
                sending.cancel()
                return Response(status_code=499)
            upstream = sending.result()
        finally:
            watcher.cancel()
            if not sending.done():
                sending.cancel()
        return Response(upstream.content, status_code=upstream.status_code, headers=_passed_back(upstream))

    async def _stream(self, replica: Replica, request: httpx.Request, release: Callable[[], None]) -> Response:
        upstream = await self.client.send(request, stream=True)
        if upstream.status_code != 200 or not upstream.headers.get("content-type", "").startswith(
                "text/event-stream"):
            try:
                content = await upstream.aread()
            finally:
                await upstream.aclose()
                release()
            return Response(content, status_code=upstream.status_code, headers=_passed_back(upstream))

        async def close() -> None:
            await upstream.aclose()
            release()

        return EventStreamResponse(self._relay(replica, upstream), on_close=close)

    async def _relay(self, replica: Replica, upstream: httpx.Response) -> AsyncIterator[bytes]:
        held = b""
        finished = False
        problem = "the stream ended without [DONE]"
        try:
            async for chunk in upstream.aiter_raw():
                data = held + chunk if held else chunk
                end = data.rfind(sse.EVENT_END)
                if end < 0:
                    held = data
                    continue
                end += len(sse.EVENT_END)
                complete, held = data[:end], data[end:]
                finished = complete.endswith(sse.DONE)
                yield complete
        except httpx.TimeoutException:
            problem = f"no data for {self.read_timeout_s:g}s (GATEWAY_READ_TIMEOUT_S)"
        except httpx.HTTPError as exc:
            problem = describe_error(exc)
        if not finished:
            self.metrics.upstream_failures.labels(replica.service, "stream_cut").inc()
            logger.warning("upstream stream cut short", extra={"service": replica.service, "url": replica.url,
                                                               "error": problem})
            yield sse.error_event(f"The service '{replica.service}' stopped the stream early: {problem}.",
                                  type="upstream_error", code="stream_interrupted")
            yield sse.DONE


def _claim(replica: Replica) -> Callable[[], None]:
    """Count a request against the replica; the returned callable gives it back, once."""
    replica.in_flight += 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            replica.in_flight -= 1

    return release


def _passed_back(upstream: httpx.Response) -> dict[str, str]:
    return {name: upstream.headers[name] for name in _PASSED_BACK if name in upstream.headers}
