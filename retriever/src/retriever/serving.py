"""The retriever's operations, between the HTTP routes and the engine parts (embedders, collections).

:class:`RetrieverService` is also the in-process API: build one with :class:`retriever.config.Settings`, call
:meth:`~RetrieverService.load` (on a thread: it loads models), then await its methods; errors are
:class:`chat_common.errors.APIError` with the status the HTTP API answers.

Nothing slow runs on the event loop: embedding runs on the :class:`~retriever.embedder.EmbeddingWorker` thread,
collection work on threads via :func:`asyncio.to_thread`. Writes to one collection (upserts, deletes, imports,
index rebuilds) run one at a time behind that collection's writer lock; searches never take it, so they go on
while an ingest embeds.

Size: about 480 lines, over the project's ~400, on purpose for now: every method here is one route's
sequence of checks, lock and thread hand-offs over the same per-collection writer locks, and splitting the
class would spread that one locking discipline over several modules. The embeddings route and the seed import
are the parts that could move out first if it grows.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from chat_common.context import access_fields
from chat_common.errors import APIError
from retriever.collection import Collection, CollectionClosed, IndexPolicy
from retriever.config import Settings
from retriever.embedder import INGEST, QUERY, Embedder, EmbeddingWorker, bundled_model_path
from retriever.filters import FilterError, parse_filter
from retriever.index import HNSWParams
from retriever.metrics import ServiceMetrics
from retriever.registry import Registry
from retriever.schemas import (
    COLLECTION_NAME,
    CollectionInfo,
    CollectionSettings,
    DeletedCollection,
    DeletedDocument,
    DocumentIn,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ImportResult,
    SearchRequest,
    SearchResponse,
    UpsertResult,
)
from retriever.seed_import import SeedError, read_seed
from retriever.store import CollectionConfig

__all__ = ["RetrieverService"]

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 2


class RetrieverService:
    """Embedders, collections and the worker thread of one retriever. ``embedders`` may hand in models that are
    already loaded (tests share one); any configured embedder not among them is loaded by :meth:`load`."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics | None = None, embedders: dict[str, Embedder] | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ServiceMetrics(CollectorRegistry())
        self.policy = IndexPolicy(
            exact_max_chunks=settings.exact_max_chunks,
            hnsw=HNSWParams(settings.hnsw_m, settings.hnsw_ef_construction, settings.hnsw_ef_search),
            tombstone_rebuild_fraction=settings.tombstone_rebuild_fraction,
        )
        self.embedders: dict[str, Embedder] = dict(embedders or {})
        self.worker = EmbeddingWorker(settings.encode_batch_size, on_batch=self._count_batch)
        self.registry = Registry(settings.data_dir, self.policy, read_only=settings.read_only)
        self.loaded = False
        self.load_errors: dict[str, str] = {}
        self._writers: dict[str, asyncio.Lock] = {}

    def _count_batch(self, embedder_id: str, texts: int) -> None:
        self.metrics.embedded_texts.labels(embedder_id).inc(texts)

    # -- life cycle ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the embedders and open the collections (blocking: run it on a thread). Failures are kept in
        :attr:`load_errors`, which /ready reports."""
        for embedder_id, path in self.settings.embedder_paths(bundled_model_path()).items():
            if embedder_id in self.embedders:
                continue
            embedder = Embedder(
                embedder_id,
                path,
                torch_threads=self.settings.torch_threads,
                onnx_dir=self.settings.data_dir / "onnx" if self.settings.onnx else None,
            )
            try:
                embedder.load()
            except Exception as exc:
                logger.exception("embedder failed to load", extra={"embedder": embedder_id, "path": path})
                self.load_errors[f"embedder '{embedder_id}'"] = f"{type(exc).__name__}: {exc}"
                continue
            self.embedders[embedder_id] = embedder
        for name, error in self.registry.open_all().items():
            self.load_errors[f"collection '{name}'"] = error
        for name in self.registry.names():
            collection = self.registry.collections[name]
            serves = self.embedders.get(collection.config.embedder)
            if serves is None:
                self.load_errors[f"collection '{name}'"] = (
                    f"its embedder '{collection.config.embedder}' is not loaded; configure it in RETRIEVER_EMBEDDERS"
                )
            elif serves.dimension != collection.config.dimension:
                self.load_errors[f"collection '{name}'"] = (
                    f"it holds {collection.config.dimension}-dimensional vectors but embedder "
                    f"'{serves.id}' makes {serves.dimension}-dimensional ones"
                )
            self._publish_sizes(collection)
        self.loaded = True
        self.metrics.ready.set(0 if self.load_errors else 1)
        logger.info(
            "retriever loaded", extra={"embedders": sorted(self.embedders), "collections": self.registry.names()}
        )

    def flush(self) -> None:
        """Write changed index files (blocking)."""
        self.registry.flush_all()

    async def close(self) -> None:
        await asyncio.to_thread(self.registry.close_all)
        await asyncio.to_thread(self.worker.close)

    # -- lookups -------------------------------------------------------------------------------------------------

    def _require_loaded(self) -> None:
        if "startup" in self.load_errors:
            raise APIError(
                503,
                f"The retriever failed to start: {self.load_errors['startup']}. See /ready and the service log.",
                code="load_failed",
            )
        if not self.loaded:
            raise APIError(
                503,
                "The retriever is still loading its embedders and collections; retry shortly.",
                code="loading",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    def _existing(self) -> str:
        names = self.registry.names()
        return f"Existing collections: {', '.join(names)}." if names else "There are no collections yet."

    def collection(self, name: str, hint: str = "") -> Collection:
        """The open collection, or 404 naming the existing ones (plus ``hint``)."""
        self._require_loaded()
        collection = self.registry.get(name)
        if collection is None:
            raise APIError(
                404,
                f"The collection '{name}' does not exist. {self._existing()}{hint}",
                param="name",
                code="collection_not_found",
            )
        return collection

    def embedder(self, embedder_id: str) -> Embedder:
        embedder = self.embedders.get(embedder_id)
        if embedder is None:
            raise APIError(
                503,
                f"The embedder '{embedder_id}' is not loaded; see /ready for why.",
                code="embedder_unavailable",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return embedder

    def _embedder_for(self, collection: Collection) -> Embedder:
        embedder = self.embedder(collection.config.embedder)
        if embedder.dimension != collection.config.dimension:
            raise APIError(
                503,
                f"The collection '{collection.name}' holds {collection.config.dimension}-dimensional "
                f"vectors but its embedder '{embedder.id}' now makes {embedder.dimension}-dimensional "
                "ones; see /ready.",
                code="embedder_unavailable",
            )
        return embedder

    def _writer(self, name: str) -> asyncio.Lock:
        return self._writers.setdefault(name, asyncio.Lock())

    def _publish_sizes(self, collection: Collection) -> None:
        info = collection.info()
        self.metrics.sizes(collection.name, info.documents, info.chunks)

    # -- collections ---------------------------------------------------------------------------------------------

    def list_collections(self) -> list[CollectionInfo]:
        self._require_loaded()
        return [self.registry.collections[name].info() for name in self.registry.names()]

    async def put_collection(self, name: str, wanted: CollectionSettings) -> tuple[CollectionInfo, bool]:
        """Create the collection, or find it with the same settings: (info, created). 409 when it exists with
        other settings; 400 for a bad name or settings."""
        if not COLLECTION_NAME.match(name):
            raise APIError(
                400,
                f"Invalid collection name '{name}': use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit.",
                param="name",
                code="invalid_value",
            )
        self._require_loaded()
        config = self._config(name, wanted)
        async with self._writer(name):
            existing = self.registry.get(name)
            if existing is not None:
                self._check_same(existing, wanted)
                return existing.info(), False
            collection = await asyncio.to_thread(self.registry.build, config)
            self.registry.add(collection)
        self._publish_sizes(collection)
        logger.info("collection created", extra={"collection": name, "embedder": config.embedder})
        return collection.info(), True

    def _config(self, name: str, wanted: CollectionSettings) -> CollectionConfig:
        embedder_id = wanted.embedder or self.settings.default_embedder
        if embedder_id not in self.settings.embedder_ids():
            raise APIError(
                400,
                f"Unknown embedder '{embedder_id}'. Known embedders: {', '.join(self.settings.embedder_ids())}.",
                param="embedder",
                code="invalid_value",
            )
        embedder = self.embedder(embedder_id)
        size = wanted.chunk_size or self.settings.chunk_size
        overlap = (
            wanted.chunk_overlap if wanted.chunk_overlap is not None else min(self.settings.chunk_overlap, size // 2)
        )
        if overlap * 2 > size:
            raise APIError(
                400,
                f"chunk_overlap ({overlap}) must be at most half of chunk_size ({size}).",
                param="chunk_overlap",
                code="invalid_value",
            )
        return CollectionConfig(name, embedder_id, embedder.dimension, size, overlap, wanted.index or "auto")

    @staticmethod
    def _check_same(existing: Collection, wanted: CollectionSettings) -> None:
        have = existing.config
        current = {
            "embedder": have.embedder,
            "chunk_size": have.chunk_size,
            "chunk_overlap": have.chunk_overlap,
            "index": have.index_mode,
        }
        differences = [
            f"{field} {current[field]!r} (asked {getattr(wanted, field)!r})"
            for field in sorted(wanted.model_fields_set)
            if getattr(wanted, field) is not None and getattr(wanted, field) != current[field]
        ]
        if differences:
            raise APIError(
                409,
                f"The collection '{existing.name}' already exists with {', '.join(differences)}. "
                "Delete it first to change its settings, or leave those fields out.",
                code="collection_exists",
            )

    def get_collection(self, name: str) -> CollectionInfo:
        return self.collection(name).info()

    async def delete_collection(self, name: str) -> DeletedCollection:
        collection = self.collection(name)
        async with self._writer(name):
            if self.registry.get(name) is not collection:
                raise APIError(
                    404,
                    f"The collection '{name}' does not exist. {self._existing()}",
                    param="name",
                    code="collection_not_found",
                )
            self.registry.remove(name)
            await asyncio.to_thread(self.registry.destroy, collection)
        self.metrics.forget(name)
        logger.info("collection deleted", extra={"collection": name})
        return DeletedCollection(name=name)

    # -- documents -----------------------------------------------------------------------------------------------

    def _missing_hint(self, name: str) -> str:
        return (
            f" Create it first with PUT /v1/collections/{name}, or ingest with "
            f"`python -m retriever ingest {name} PATH` (which creates it)."
        )

    async def upsert(self, name: str, documents: Sequence[DocumentIn]) -> UpsertResult:
        """Add or replace documents by id: unchanged ones are skipped, changed ones re-chunked and re-embedded
        (or only their metadata updated when the title and text are the same)."""
        collection = self.collection(name, self._missing_hint(name))
        if len(documents) > self.settings.max_batch_documents:
            raise APIError(
                413,
                f"{len(documents)} documents in one request; at most "
                f"{self.settings.max_batch_documents} are accepted. Send smaller batches.",
                param="documents",
                code="too_many_documents",
            )
        embedder = self._embedder_for(collection)
        result = await self._write(collection, embedder, documents, None)
        logger.info("documents upserted", extra={"collection": name, **result.model_dump()})
        return result

    async def _write(
        self, collection: Collection, embedder: Embedder, documents: Sequence[DocumentIn], vectors: np.ndarray | None
    ) -> UpsertResult:
        self.metrics.ingests_running.inc()
        try:
            async with self._writer(collection.name):
                plan = await asyncio.to_thread(collection.plan, documents, vectors)
                embedded, _ = await self.worker.encode(embedder, plan.inputs, INGEST)
                result = await asyncio.to_thread(collection.commit, plan, embedded)
                await self._upkeep(collection)
        except CollectionClosed:
            raise _deleted_meanwhile(collection.name) from None
        finally:
            self.metrics.ingests_running.dec()
        self.metrics.ingested_documents.labels(collection.name).inc(result.upserted)
        self.metrics.ingested_chunks.labels(collection.name).inc(result.chunks)
        self._publish_sizes(collection)
        return result

    async def _upkeep(self, collection: Collection) -> None:
        """Switch a grown collection to HNSW, or compact an HNSW index full of tombstones (writer lock held)."""
        kind = await asyncio.to_thread(collection.rebuild_needed)
        if kind is not None and await asyncio.to_thread(collection.rebuild, kind):
            self.metrics.index_rebuilds.labels(collection.name, kind).inc()

    async def delete_document(self, name: str, doc_id: str) -> DeletedDocument:
        collection = self.collection(name)
        try:
            async with self._writer(name):
                chunks = await asyncio.to_thread(collection.delete_document, doc_id)
                if chunks is not None:
                    await self._upkeep(collection)
        except CollectionClosed:
            raise _deleted_meanwhile(name) from None
        if chunks is None:
            raise APIError(
                404, f"The collection '{name}' has no document '{doc_id}'.", param="doc_id", code="document_not_found"
            )
        self.metrics.deleted_documents.labels(name).inc()
        self._publish_sizes(collection)
        return DeletedDocument(id=doc_id, chunks=chunks)

    # -- search --------------------------------------------------------------------------------------------------

    async def search(self, name: str, request: SearchRequest) -> SearchResponse:
        collection = self.collection(name)
        try:
            clauses = parse_filter(request.filter)
        except FilterError as exc:
            raise APIError(400, f"Invalid filter: {exc}.", param="filter", code="invalid_value") from None
        embedder = self._embedder_for(collection)
        started = time.perf_counter()
        query, _ = await self.worker.encode(embedder, [request.query], QUERY)
        try:
            hits = await asyncio.to_thread(collection.search, query[0], request.top_k, clauses, request.score_threshold)
        except CollectionClosed:
            raise _deleted_meanwhile(name) from None
        self.metrics.searches.labels(name).inc()
        self.metrics.search_seconds.labels(name).observe(time.perf_counter() - started)
        return SearchResponse(collection=name, data=hits)

    # -- embeddings ----------------------------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingList:
        """OpenAI's /v1/embeddings: vectors as floats or base64 little-endian float32, token counts from the
        embedder's tokenizer (special tokens included, as the model reads them)."""
        self._require_loaded()
        model = request.model or self.settings.default_embedder
        access_fields()["model"] = model
        if model not in self.embedders and model not in self.settings.embedder_ids():
            raise APIError(
                404,
                f"The model '{model}' does not exist. Available models: {', '.join(self.settings.embedder_ids())}.",
                param="model",
                code="model_not_found",
            )
        embedder = self.embedder(model)
        texts = request.texts
        if len(texts) > self.settings.max_embedding_inputs:
            raise APIError(
                400,
                f"{len(texts)} inputs in one request; at most {self.settings.max_embedding_inputs} are accepted.",
                param="input",
                code="invalid_value",
            )
        if request.dimensions is not None and request.dimensions != embedder.dimension:
            raise APIError(
                400,
                f"The model '{model}' makes {embedder.dimension}-dimensional embeddings and cannot "
                f"shorten them to {request.dimensions}; leave 'dimensions' out.",
                param="dimensions",
                code="invalid_value",
            )
        priority = QUERY if len(texts) <= self.settings.encode_batch_size else INGEST
        vectors, tokens = await self.worker.encode(embedder, texts, priority, with_tokens=True)
        if request.encoding_format == "base64":
            data = [
                Embedding(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode("ascii"))
                for i, v in enumerate(vectors)
            ]
        else:
            data = [Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
        total = sum(tokens)
        self.metrics.embedding_tokens.labels(model).inc(total)
        return EmbeddingList(data=data, model=model, usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total))

    # -- seed import ---------------------------------------------------------------------------------------------

    async def import_seed(
        self,
        name: str,
        index_data: bytes,
        metadata_data: bytes,
        config_data: bytes,
        *,
        index_name: str = "the index file",
        metadata_name: str = "the metadata file",
        config_name: str = "the config file",
    ) -> ImportResult:
        """Upsert the seed's records into the collection, reusing its vectors when they come from the
        collection's embedder (see :mod:`retriever.seed_import`)."""
        collection = self.collection(name, self._missing_hint(name))
        embedder = self._embedder_for(collection)
        try:
            seed = await asyncio.to_thread(
                read_seed,
                index_data,
                metadata_data,
                config_data,
                embedder_id=embedder.id,
                embedder_names=embedder.names(),
                dimension=collection.config.dimension,
                index_name=index_name,
                metadata_name=metadata_name,
                config_name=config_name,
            )
        except SeedError as exc:
            raise APIError(400, str(exc), code="invalid_seed") from None
        result = await self._write(collection, embedder, seed.documents, seed.vectors)
        logger.info("seed imported", extra={"collection": name, "note": seed.note, **result.model_dump()})
        return ImportResult(
            collection=name,
            documents=len(seed.documents),
            upserted=result.upserted,
            unchanged=result.unchanged,
            chunks=result.chunks,
            vectors="reused" if seed.vectors is not None else "re-embedded",
            note=seed.note,
        )

    async def import_seed_files(self, name: str, index: Path, metadata: Path, config: Path) -> ImportResult:
        """:meth:`import_seed` from files on this machine."""
        data = await asyncio.to_thread(lambda: (index.read_bytes(), metadata.read_bytes(), config.read_bytes()))
        return await self.import_seed(
            name, *data, index_name=index.name, metadata_name=metadata.name, config_name=config.name
        )


def _deleted_meanwhile(name: str) -> APIError:
    return APIError(
        404, f"The collection '{name}' was deleted during the request.", param="name", code="collection_not_found"
    )
