"""HTTP routes of the history service: parse, call the store, shape the response.

Store failures become 503 ``store_unavailable`` and malformed session ids 400, both in OpenAI's error envelope
(:func:`install_store_errors`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from chat_common.errors import APIError, error_response
from chat_common.metrics import metrics_response
from history.messages import MAX_BATCH, InvalidSessionId, NewMessage, SessionInfo, StoredMessage, check_session_id
from history.store import MessageStore, StoreUnavailable

__all__ = ["install_store_errors", "router"]

router = APIRouter()

RETRY_AFTER_S = 2


class AppendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[NewMessage] = Field(min_length=1, max_length=MAX_BATCH)


class AppendResponse(BaseModel):
    session_id: str
    messages: list[StoredMessage]


class MessagesResponse(BaseModel):
    session_id: str
    messages: list[StoredMessage]
    has_more: bool = Field(description="Older messages exist: ask again with before_seq = the first seq here.")


class SessionsResponse(BaseModel):
    sessions: list[SessionInfo]


class DeleteResponse(BaseModel):
    session_id: str
    deleted: int


def _session_id(session_id: str) -> str:
    try:
        return check_session_id(session_id)
    except InvalidSessionId as exc:
        raise APIError(400, str(exc), param="session_id", code="invalid_value") from None


def _store(request: Request) -> MessageStore:
    """The open store, or 503 with the reason it could not be opened (the app keeps trying)."""
    store: MessageStore | None = request.app.state.store
    if store is None:
        error: StoreUnavailable = request.app.state.store_error
        raise StoreUnavailable(error.description, error.reason, error.hint)  # a fresh one: no traceback pile-up
    return store


SessionId = Annotated[str, Depends(_session_id)]
Store = Annotated[MessageStore, Depends(_store)]


@router.post("/v1/sessions/{session_id}/messages")
async def append_messages(session_id: SessionId, body: AppendRequest, store: Store) -> AppendResponse:
    return AppendResponse(session_id=session_id, messages=await store.append(session_id, body.messages))


@router.get("/v1/sessions/{session_id}/messages")
async def recent_messages(
    session_id: SessionId,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many of the latest messages.")] = 20,
    before_seq: Annotated[int | None, Query(ge=1, description="Only messages older than this seq.")] = None,
) -> MessagesResponse:
    found = await store.recent(session_id, limit + 1, before_seq)
    return MessagesResponse(session_id=session_id, messages=found[-limit:], has_more=len(found) > limit)


@router.get("/v1/sessions")
async def list_sessions(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> SessionsResponse:
    return SessionsResponse(sessions=await store.sessions(limit, offset))


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: SessionId, store: Store) -> DeleteResponse:
    return DeleteResponse(session_id=session_id, deleted=await store.delete(session_id))


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(store: Store) -> dict[str, str]:
    await store.ping()
    return {"status": "ready", "store": store.description}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return metrics_response(request.app.state.metrics.registry)


def install_store_errors(app: FastAPI) -> None:
    """Answer :class:`StoreUnavailable` with 503 ``store_unavailable`` (and Retry-After), and
    :class:`InvalidSessionId` with 400, in OpenAI's error envelope."""

    async def unavailable(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreUnavailable)
        return error_response(
            APIError(503, str(exc), code="store_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})
        )

    async def invalid_session_id(_: Request, exc: Exception) -> Response:
        return error_response(APIError(400, str(exc), param="session_id", code="invalid_value"))

    app.add_exception_handler(StoreUnavailable, unavailable)
    app.add_exception_handler(InvalidSessionId, invalid_session_id)
