"""The IT-support chatbot's API (seed 002), kept working through the gateway.

``POST /api/v1/chat/`` (or ``/api/v1/chat``) answers a ``query`` from the ``GATEWAY_RAG_COLLECTION`` collection with
``GATEWAY_RAG_MODEL``; ``GET /api/v1/chat/health`` says whether both are there. Errors use that API's
own shape, ``{"error", "detail", "timestamp"}``, with 400, 503 or 500. Credentials in the query, the
passages and the answer are masked (:mod:`gateway.credentials`) before they reach the retriever or the
model, and before anything is returned.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from chat_common.errors import APIError
from gateway.answer import metered
from gateway.auth import allow_model
from gateway.credentials import mask_credentials
from gateway.limits import admit_chat
from gateway.proxy import Proxy
from gateway.retrieval import RetrievalSpec, RetrieverClient, RetrieverUnavailable, with_passages

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/chat", tags=["IT-support chatbot compatibility"])


class SupportQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(4, ge=1, le=20)
    max_tokens: int = Field(150, ge=50, le=500)


class SupportError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(exc: SupportError) -> Response:
    return JSONResponse(
        {"error": exc.error, "detail": exc.detail, "timestamp": _now()}, status_code=exc.status, headers=exc.headers
    )


def _parse(body: bytes) -> SupportQuery:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SupportError(400, "Validation Error", 'The request body must be JSON: {"query": "..."}.') from None
    try:
        query = SupportQuery.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        limits = {
            "query": "Query must be between 1 and 2000 characters",
            "top_k": "top_k must be an integer between 1 and 20",
            "max_tokens": "max_tokens must be an integer between 50 and 500",
        }
        raise SupportError(400, "Validation Error", limits.get(field, f"{field}: {first['msg']}")) from None
    if not query.query.strip():
        raise SupportError(400, "Validation Error", "Query must be between 1 and 2000 characters")
    return query


@router.post("/")
@router.post("", include_in_schema=False)  # both spellings answer (no redirect to the slashed one)
async def chat(request: Request) -> Response:
    started = time.perf_counter()
    allow_model(request.scope, request.app.state.settings.rag_model)  # the API key's allow-list: 403
    try:
        answer, limit_headers = await _answer(request, _parse(await request.body()))
    except SupportError as exc:
        return _error(exc)
    except Exception:
        logger.exception("IT-support chat failed")
        return _error(
            SupportError(
                500, "Internal Server Error", "The query could not be processed. The gateway log has the details."
            )
        )
    answer["processing_time"] = round(time.perf_counter() - started, 3)
    answer["timestamp"] = _now()
    response = JSONResponse(answer)
    response.raw_headers.extend(limit_headers)  # x-ratelimit-*, as on every chat route
    return response


async def _answer(request: Request, ask: SupportQuery) -> tuple[dict[str, Any], list[tuple[bytes, bytes]]]:
    """The answer's body, and the rate-limit headers to send with it."""
    settings = request.app.state.settings
    proxy: Proxy = request.app.state.proxy
    retriever: RetrieverClient | None = request.app.state.retriever
    if retriever is None:
        raise SupportError(503, "Service Unavailable", "No retriever is configured (GATEWAY_RETRIEVER_URL).")
    query = mask_credentials(ask.query)
    try:  # the route's model's rate limits, before any work
        admission = await admit_chat(request.app.state, request.scope, settings.rag_model, [{"content": query}])
    except APIError as exc:
        title = "Too Many Requests" if exc.status_code == 429 else "Service Unavailable"
        raise SupportError(exc.status_code, title, exc.message, exc.headers) from exc
    spec = RetrievalSpec(collection=settings.rag_collection, top_k=ask.top_k)
    try:
        hits = await retriever.search(spec, query)
    except RetrieverUnavailable as exc:
        raise SupportError(503, "Service Unavailable", f"The knowledge base cannot be searched: {exc}.") from exc
    except APIError as exc:
        raise SupportError(
            503,
            "Service Unavailable",
            f"The knowledge base '{spec.collection}' is not ready: "
            f"{exc.message} Ingest it with `python -m retriever ingest {spec.collection} "
            "data/it-support/articles.jsonl`.",
        ) from exc
    for hit in hits:
        hit["text"] = mask_credentials(str(hit.get("text", "")))
    model = settings.rag_model
    card = proxy.registry.card(model) or {}
    messages, passages = with_passages(
        [{"role": "user", "content": query}],
        hits,
        settings.rag_instruction,
        context_length=card.get("context_length"),
        reserve=ask.max_tokens,
    )
    body = {"model": model, "max_tokens": ask.max_tokens, "stream": False, "messages": messages}
    try:
        response = await proxy.call_model(model, "/v1/chat/completions", orjson.dumps(body), stream=False)
    except APIError as exc:
        admission.finish()  # no answer: the token estimate is given back
        raise SupportError(
            503 if exc.status_code in (404, 503) else 500,
            "Service Unavailable" if exc.status_code in (404, 503) else "Internal Server Error",
            exc.message,
        ) from exc
    assert isinstance(response, Response)
    metered(admission, response)
    admission.finish()  # the tokens used, counted against the limits
    payload = orjson.loads(response.body)
    if response.status_code != 200:
        message = (payload.get("error") or {}).get("message", "the model failed")
        status = 503 if response.status_code in (429, 503) else 400 if response.status_code == 400 else 500
        raise SupportError(
            status,
            {400: "Bad Request", 503: "Service Unavailable"}.get(status, "Internal Server Error"),
            f"The model '{model}' could not answer: {message}",
        )
    text = payload["choices"][0]["message"].get("content") or ""
    body = {
        "response": mask_credentials(text.strip()),
        "query": query,
        "context_used": passages.context(),
        "search_results": [
            {
                "subject": h.get("title") or h.get("doc_id"),
                "answer": h["text"],
                "score": h.get("score"),
                "metadata": h.get("metadata") or {},
            }
            for h in hits
        ],
    }
    return body, admission.headers


@router.get("/health")
async def health(request: Request) -> Response:
    settings = request.app.state.settings
    proxy: Proxy = request.app.state.proxy
    retriever: RetrieverClient | None = request.app.state.retriever
    collection = None
    if retriever is not None:
        try:
            collection = await retriever.collection(settings.rag_collection)
        except RetrieverUnavailable:
            collection = None
    model_loaded = proxy.registry.card(settings.rag_model) is not None
    healthy = model_loaded and collection is not None
    return JSONResponse(
        {
            "status": "healthy" if healthy else "unhealthy",
            "model": settings.rag_model,
            "model_loaded": model_loaded,
            "collection": settings.rag_collection,
            "collection_loaded": collection is not None,
            "documents": (collection or {}).get("documents"),
            "chunks": (collection or {}).get("chunks"),
            "timestamp": _now(),
        },
        status_code=200 if healthy else 503,
    )
