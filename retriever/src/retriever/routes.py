"""HTTP routes of the retriever: parse, call :class:`~retriever.serving.RetrieverService`, shape the response.

Errors come back in OpenAI's envelope (``chat_common.errors``): 400 bad input (nothing is changed), 404 unknown
collection, document or embedder, 405 a write sent to a read replica, 409 a collection that exists with other
settings, 413 too much at once, 503 while loading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Request, Response, UploadFile
from starlette.responses import Response as StarletteResponse

from chat_common.context import access_fields
from chat_common.errors import APIError
from chat_common.metrics import metrics_response
from chat_common.protocol import ModelCard, ModelList
from retriever.schemas import (
    CollectionInfo,
    CollectionList,
    CollectionSettings,
    DeletedCollection,
    DeletedDocument,
    EmbeddingList,
    EmbeddingRequest,
    ImportResult,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResult,
)
from retriever.serving import RetrieverService

__all__ = ["router"]

router = APIRouter()


def _service(request: Request) -> RetrieverService:
    return request.app.state.service  # type: ignore[no-any-return]


def _collection_name(name: str) -> str:
    access_fields()["collection"] = name
    return name


def _writable(allow: str) -> Callable[[Request], None]:
    """A dependency of the write routes: a read replica answers 405 (``allow``: the methods it takes there)."""

    def check(request: Request) -> None:
        if _service(request).settings.read_only:
            raise APIError(
                405,
                "This retriever is a read replica (RETRIEVER_READ_ONLY=true): it serves searches, embeddings "
                "and listings only. Send collection and document changes to the writer (the 'retriever' "
                "service, RETRIEVER_READ_ONLY=false, same data folder); readers see them within "
                "RETRIEVER_RELOAD_INTERVAL_S.",
                code="read_only_replica",
                headers={"Allow": allow},
            )

    return check


Service = Annotated[RetrieverService, Depends(_service)]
Name = Annotated[str, Depends(_collection_name)]
_COLLECTION_WRITE = [Depends(_writable("GET"))]  # /v1/collections/{name}: GET stays
_WRITE = [Depends(_writable(""))]  # paths a reader takes no method on


@router.get("/v1/collections")
async def list_collections(service: Service) -> CollectionList:
    return CollectionList(data=service.list_collections())


@router.put(
    "/v1/collections/{name}",
    status_code=201,
    responses={200: {"model": CollectionInfo}},
    dependencies=_COLLECTION_WRITE,
)
async def put_collection(
    name: Name, service: Service, response: Response, body: Annotated[CollectionSettings | None, Body()] = None
) -> CollectionInfo:
    info, created = await service.put_collection(name, body or CollectionSettings())
    response.status_code = 201 if created else 200
    return info


@router.get("/v1/collections/{name}")
async def get_collection(name: Name, service: Service) -> CollectionInfo:
    return service.get_collection(name)


@router.delete("/v1/collections/{name}", dependencies=_COLLECTION_WRITE)
async def delete_collection(name: Name, service: Service) -> DeletedCollection:
    return await service.delete_collection(name)


@router.post("/v1/collections/{name}/documents", dependencies=_WRITE)
async def upsert_documents(name: Name, body: UpsertRequest, service: Service) -> UpsertResult:
    return await service.upsert(name, body.documents)


@router.delete("/v1/collections/{name}/documents/{doc_id:path}", dependencies=_WRITE)
async def delete_document(name: Name, doc_id: str, service: Service) -> DeletedDocument:
    return await service.delete_document(name, doc_id)


@router.post("/v1/collections/{name}/search")
async def search(name: Name, body: SearchRequest, service: Service) -> SearchResponse:
    return await service.search(name, body)


async def _read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(
            413,
            f"The '{field}' file is larger than {limit} bytes (RETRIEVER_MAX_IMPORT_BYTES).",
            param=field,
            code="file_too_large",
        )
    return data


@router.post("/v1/collections/{name}/import", dependencies=_WRITE)
async def import_seed(
    name: Name,
    service: Service,
    index: Annotated[UploadFile, File(description="The seed's FAISS index (it_support_faiss_index.bin).")],
    metadata: Annotated[UploadFile, File(description="The seed's metadata pickle (it_support_metadata.pkl).")],
    config: Annotated[UploadFile, File(description="The seed's config (it_support_config.json).")],
) -> ImportResult:
    limit = service.settings.max_import_bytes
    files = [
        await _read_upload(upload, field, limit)
        for upload, field in ((index, "index"), (metadata, "metadata"), (config, "config"))
    ]
    return await service.import_seed(
        name,
        *files,
        index_name=index.filename or "index",
        metadata_name=metadata.filename or "metadata",
        config_name=config.filename or "config",
    )


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, service: Service) -> EmbeddingList:
    return await service.embed(body)


@router.get("/v1/models")
async def list_models(service: Service) -> ModelList:
    """The embedders, as OpenAI's model list (what ``model`` in /v1/embeddings accepts)."""
    return ModelList(
        data=[
            ModelCard.model_validate(
                {"id": embedder_id, "owned_by": "retriever", "loaded": embedder_id in service.embedders}
            )
            for embedder_id in service.settings.embedder_ids()
        ]
    )


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(service: Service) -> dict[str, object]:
    if service.load_errors:
        detail = "; ".join(f"{what}: {error}" for what, error in service.load_errors.items())
        raise APIError(
            503,
            f"not ready: {detail}. Fix the configuration or the data folder and restart the service.",
            code="load_failed",
        )
    if not service.loaded:
        raise APIError(503, "loading the embedders and collections", code="loading", headers={"Retry-After": "2"})
    return {
        "status": "ready",
        "role": "reader" if service.settings.read_only else "writer",
        "embedders": sorted(service.embedders),
        "collections": service.registry.names(),
    }


@router.get("/metrics")
async def metrics(service: Service) -> StarletteResponse:
    return metrics_response(service.metrics.registry)
