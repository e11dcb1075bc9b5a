"""Prometheus metrics of the retriever, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.searches = Counter(
            "retriever_searches", "Searches answered, by collection.", ["collection"], registry=registry
        )
        self.search_seconds = Histogram(
            "retriever_search_seconds",
            "Search latency (query embedding included), by collection.",
            ["collection"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.ingested_documents = Counter(
            "retriever_ingested_documents",
            "Documents added or changed, by collection.",
            ["collection"],
            registry=registry,
        )
        self.ingested_chunks = Counter(
            "retriever_ingested_chunks", "Chunks embedded and stored, by collection.", ["collection"], registry=registry
        )
        self.deleted_documents = Counter(
            "retriever_deleted_documents", "Documents deleted, by collection.", ["collection"], registry=registry
        )
        self.ingests_running = Gauge("retriever_ingests_running", "Upserts and imports in progress.", registry=registry)
        self.embedded_texts = Counter(
            "retriever_embedded_texts",
            "Texts embedded (queries, chunks, /v1/embeddings inputs), by embedder.",
            ["embedder"],
            registry=registry,
        )
        self.embedding_tokens = Counter(
            "retriever_embedding_tokens",
            "Tokens in /v1/embeddings inputs, by embedder.",
            ["embedder"],
            registry=registry,
        )
        self.documents = Gauge(
            "retriever_collection_documents", "Documents per collection.", ["collection"], registry=registry
        )
        self.chunks = Gauge("retriever_collection_chunks", "Chunks per collection.", ["collection"], registry=registry)
        self.index_rebuilds = Counter(
            "retriever_index_rebuilds",
            "FAISS indexes rebuilt from the stored vectors, by collection and new kind.",
            ["collection", "index"],
            registry=registry,
        )
        self.ready = Gauge("retriever_ready", "1 once the embedders and collections are loaded.", registry=registry)

    def sizes(self, collection: str, documents: int, chunks: int) -> None:
        self.documents.labels(collection).set(documents)
        self.chunks.labels(collection).set(chunks)

    def forget(self, collection: str) -> None:
        """Drop a deleted collection's series."""
        for metric in (
            self.searches,
            self.search_seconds,
            self.ingested_documents,
            self.ingested_chunks,
            self.deleted_documents,
            self.documents,
            self.chunks,
        ):
            try:
                metric.remove(collection)
            except KeyError:
                pass
        for kind in ("flat", "hnsw"):
            try:
                self.index_rebuilds.remove(collection, kind)
            except KeyError:
                pass
