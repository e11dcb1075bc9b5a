"""HTTP routes of the gateway: the unified OpenAI-compatible API, health, readiness and metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from chat_common.context import access_fields
from chat_common.errors import APIError, error_response
from chat_common.metrics import metrics_response
from chat_common.requests import parse_chat_request
from gateway.asgi import cancel_on_disconnect, read_body
from gateway.proxy import Proxy

__all__ = ["ChatRoute", "router"]

logger = logging.getLogger(__name__)

router = APIRouter()


def _proxy(request: Request) -> Proxy:
    return request.app.state.proxy  # type: ignore[no-any-return]


class ChatRoute:
    """``POST /v1/chat/completions``, the gateway's hot path, answered before FastAPI's routing stack.

    Installed as the innermost middleware: every other request goes on to the FastAPI app. The body is
    validated (bad input never reaches a model), forwarded unchanged to a replica of the service that
    owns the model, and the answer relayed. A client that disconnects cancels the work and closes the
    upstream request. Errors are rendered in the same envelope as the app's error handlers render them.
    Skipping the per-request machinery of the routing stack is worth about a third of the gateway's
    streaming throughput (``bench/RESULTS.md``).
    """

    PATH = "/v1/chat/completions"

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await _answer_error(scope, receive, send, APIError(405, f"Use POST for {self.PATH}.",
                                                                headers={"Allow": "POST"}))
        else:
            await self._chat(scope, receive, send)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy: Proxy = self.state.proxy
        try:
            body = await read_body(scope, receive, self.state.settings.max_body_bytes)
            chat = parse_chat_request(body)
        except ClientDisconnect:
            return
        except APIError as exc:
            await _answer_error(scope, receive, send, exc)
            return
        status = 499
        async with cancel_on_disconnect(receive) as gone:
            try:
                response = await proxy.forward(chat.model, self.PATH, body, stream=chat.stream)
            except APIError as exc:
                response = error_response(exc)
            except Exception:
                logger.exception("unhandled error on POST %s", self.PATH)
                response = error_response(APIError(500, "Internal server error. The gateway log has the details."))
            await response(scope, receive, send)
            status = response.status_code
        if gone():
            status = 499
            access_fields()["client_gone"] = True
        proxy.metrics.requests.labels(chat.model, str(status)).inc()


async def _answer_error(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
    await error_response(error)(scope, receive, send)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    return {"object": "list", "data": _proxy(request).registry.cards()}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> dict[str, object]:
    registry = _proxy(request).registry
    if not registry.model_ids:
        down = "; ".join(f"{r.service} at {r.url}: {r.error}" for r in registry.unreachable()) or "none listed"
        raise APIError(503, f"No model is routable yet. Unreachable services: {down}.", code="no_models",
                       headers={"Retry-After": "2"})
    return {"status": "ready", "models": registry.model_ids,
            "unreachable": [{"service": r.service, "url": r.url, "error": r.error} for r in registry.unreachable()]}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    proxy = _proxy(request)
    proxy.metrics.models.set(len(proxy.registry.model_ids))
    return metrics_response(proxy.metrics.registry)
