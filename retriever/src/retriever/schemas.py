"""Request and response bodies of the retriever's HTTP API (and of its in-process API, which takes the same).

The retriever's own bodies reject unknown fields (a misspelt ``txt`` should not silently store nothing); the
OpenAI-compatible embeddings request accepts and ignores them, as OpenAI's clients expect.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "COLLECTION_NAME",
    "MAX_TOP_K",
    "CollectionInfo",
    "CollectionList",
    "CollectionSettings",
    "DeletedCollection",
    "DeletedDocument",
    "DocumentIn",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "EmbeddingUsage",
    "Hit",
    "ImportResult",
    "IndexMode",
    "SearchRequest",
    "SearchResponse",
    "UpsertRequest",
    "UpsertResult",
]

logger = logging.getLogger(__name__)

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_TOP_K = 20
MAX_QUERY_CHARS = 100_000  # the embedder reads only its first max_seq_length tokens anyway
MAX_METADATA_CHARS = 65536
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

IndexMode = Literal["auto", "flat", "hnsw"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Body):
    """One document to store. Its text is split into chunks; each chunk is embedded with the title before it."""

    id: Annotated[str, Field(min_length=1, max_length=256, description="Unique within the collection.")]
    text: Annotated[str, Field(min_length=1, max_length=10_000_000)]
    title: Annotated[str, Field(max_length=1000)] | None = None
    source: Annotated[str, Field(max_length=2000)] | None = None
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="JSON object; top-level scalars and lists of scalars can be filtered on."
    )

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if _CONTROL.search(value) or value != value.strip():
            raise ValueError("must not contain control characters or start or end with whitespace")
        return value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("metadata")
    @classmethod
    def _json_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be plain JSON ({exc})") from None
        if size > MAX_METADATA_CHARS:
            raise ValueError(f"is {size} characters as JSON; at most {MAX_METADATA_CHARS} are accepted")
        return value


class UpsertRequest(_Body):
    documents: Annotated[list[DocumentIn], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self) -> UpsertRequest:
        seen: set[str] = set()
        for doc in self.documents:
            if doc.id in seen:
                raise ValueError(f"document id {doc.id!r} appears more than once in this request")
            seen.add(doc.id)
        return self


class UpsertResult(BaseModel):
    upserted: int = Field(description="Documents added or changed.")
    unchanged: int = Field(description="Documents already stored exactly so (nothing was embedded for them).")
    chunks: int = Field(description="Chunks embedded and stored by this request.")


class CollectionSettings(_Body):
    """Body of ``PUT /v1/collections/{name}``; a field left out takes the service default for a new collection
    and matches anything for an existing one."""

    embedder: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    chunk_size: Annotated[int, Field(ge=100, le=20000)] | None = None
    chunk_overlap: Annotated[int, Field(ge=0)] | None = None
    index: IndexMode | None = None


class CollectionInfo(BaseModel):
    name: str
    embedder: str
    dimension: int
    documents: int
    chunks: int
    index: Literal["flat", "hnsw"] = Field(description="The FAISS index in use now.")
    index_mode: IndexMode = Field(description="The collection's setting: auto picks flat or hnsw by size.")
    chunk_size: int
    chunk_overlap: int


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionInfo]


class DeletedCollection(BaseModel):
    name: str
    deleted: bool = True


class DeletedDocument(BaseModel):
    id: str
    deleted: bool = True
    chunks: int


class SearchRequest(_Body):
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = 4
    filter: dict[str, Any] | None = Field(
        None,
        description='Metadata conditions, AND-ed: {"key": value} (a list-valued field matches when it '
        'holds the value) or {"key": {"$in": [v1, v2]}}.',
    )
    score_threshold: Annotated[float, Field(ge=-1.0, le=1.0)] | None = Field(
        None, description="Leave out hits whose cosine similarity is below this."
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class Hit(BaseModel):
    doc_id: str
    chunk_id: str = Field(description="'{doc_id}#{n}': the n-th chunk (from 0) of the document.")
    text: str
    title: str | None
    source: str | None
    score: float = Field(description="Cosine similarity between the query and the chunk, -1 to 1.")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    collection: str
    data: list[Hit]


class ImportResult(BaseModel):
    collection: str
    documents: int = Field(description="Records read from the seed's metadata pickle.")
    upserted: int
    unchanged: int
    chunks: int
    vectors: Literal["reused", "re-embedded"]
    note: str = Field(description="Why the vectors were reused or re-embedded.")


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. Unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(item, str) for item in value):
            raise ValueError("token arrays are not supported: send the text (a string or a list of strings)")
        if isinstance(value, list) and not value:
            raise ValueError("must hold at least one string")
        for item in [value] if isinstance(value, str) else value:
            if not item:
                raise ValueError("strings must not be empty")
        return value

    @model_validator(mode="after")
    def _log_unknown(self) -> EmbeddingRequest:
        if self.model_extra and logger.isEnabledFor(logging.DEBUG):
            logger.debug("ignoring unknown fields %s in EmbeddingRequest", sorted(self.model_extra))
        return self

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)  # type: ignore[arg-type]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
