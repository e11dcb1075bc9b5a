"""Importing the knowledge base of the IT-support system Switchboard replaces.

That system keeps three files: ``it_support_faiss_index.bin`` (a FAISS index), ``it_support_metadata.pkl`` (a
pickle describing what each vector is) and ``it_support_config.json`` (which embedding model built them). Their
exact layout is not documented, so this module assumes, and checks, the following:

- The pickle holds a list of records, or a dict that holds that list under one of ``documents``, ``metadata``,
  ``records``, ``items``, ``data``, ``entries`` or ``chunks``, or a dict of records keyed by id. Record ``i``
  describes the ``i``-th vector of the index (for an id-mapped index: the vector with id ``i``).
- A record is a dict with a text field (the first present of ``answer``, ``text``, ``content``,
  ``page_content``, ``body``, ``chunk``), optionally a title field (``subject``, ``title``, ``question``,
  ``name``; a record with both ``question`` and ``answer`` is a Q&A pair: title = question, text = answer), an id
  field (``id``, ``doc_id``, ``document_id``, ``ticket_id``), a ``source`` or ``url``, and a ``metadata`` dict.
  Its other top-level strings, numbers, booleans and lists of them go into the metadata too. A bare string is
  a record with only a text. Records without ids get ``seed-00000``, ``seed-00001``... by position (stable
  across re-imports of the same files); so do all records when the given ids repeat.
- The config is a JSON object naming the model under ``embedding_model``, ``model_name``,
  ``embedding_model_name``, ``model``, ``embedder``, ``sentence_transformer`` or ``encoder`` (searched in nested
  objects too), e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``.

Vectors are reused when the config's model is the collection's embedder (compared by the last path part,
case-insensitively: ``sentence-transformers/all-MiniLM-L6-v2`` is ``all-minilm-l6-v2``), the index's dimension
is the embedder's and it holds one exact vector per record; each record is then one chunk with its vector
(re-normalised for cosine similarity). Otherwise the texts are embedded again with the collection's embedder and
chunked like any other document, and the result says why.

The pickle is read by :class:`RestrictedUnpickler`, which builds plain lists, dicts, tuples, sets, strings,
bytes, numbers, booleans and ``None`` and refuses to import anything: a pickle that names any other global
(``os.system``, a class with a ``__reduce__`` payload...) is rejected before that global is ever looked up, so
nothing in it runs. The one exception is a short allow-list of value types whose pickled form only rebuilds a
value from its own plain data, never calling out to anything else: ``set`` and ``frozenset`` (protocol 2 and older
write them as a call), ``collections.OrderedDict``, the ``datetime`` types, and ``_codecs.encode`` restricted to
what pickle uses it for (turning a latin-1 string into ``bytes`` in protocols 0-2).
"""

from __future__ import annotations

import _compat_pickle
import datetime as dt
import io
import json
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from retriever.embedder import model_key
from retriever.index import SeedIndexError, read_seed_vectors
from retriever.schemas import DocumentIn

__all__ = ["RestrictedUnpickler", "SeedError", "SeedImport", "UnsafePickle", "load_pickle", "read_seed"]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stands in for ``_codecs.encode``, which protocols 0-2 use to write ``bytes`` (always as latin-1)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickle(f"refusing _codecs.encode with encoding {encoding!r}: only latin1 byte strings are allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("collections", "OrderedDict"): OrderedDict,
    ("datetime", "date"): dt.date,
    ("datetime", "datetime"): dt.datetime,
    ("datetime", "time"): dt.time,
    ("datetime", "timedelta"): dt.timedelta,
    ("datetime", "timezone"): dt.timezone,
}

_LIST_KEYS = ("documents", "metadata", "records", "items", "data", "entries", "chunks")
_TEXT_FIELDS = ("answer", "text", "content", "page_content", "body", "chunk")
_TITLE_FIELDS = ("subject", "title", "question", "name")
_ID_FIELDS = ("id", "doc_id", "document_id", "ticket_id")
_SOURCE_FIELDS = ("source", "url")
_MODEL_KEYS = (
    "embedding_model",
    "model_name",
    "embedding_model_name",
    "model",
    "embedder",
    "sentence_transformer",
    "encoder",
)


class SeedError(ValueError):
    """The seed files cannot be imported; the message names the file and what is wrong with it."""


class UnsafePickle(SeedError, pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only; see the module docstring."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # protocols 0-2 write Python 2 names ('__builtin__.set'); translate them as pickle itself does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickle(
                f"refusing to load '{module}.{name}' from {self.source}: only plain lists, dicts, "
                "strings and numbers are allowed"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(
            f"refusing to load a persistent reference from {self.source}: only plain lists, dicts, "
            "strings and numbers are allowed"
        )


def load_pickle(data: bytes, source: str) -> Any:
    """The pickle's content, built by :class:`RestrictedUnpickler`. Raises :class:`UnsafePickle` or
    :class:`SeedError`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickle:
        raise
    except Exception as exc:  # a truncated or corrupt pickle fails in many ways
        raise SeedError(f"{source} is not a readable pickle: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class SeedImport:
    documents: list[DocumentIn]
    vectors: np.ndarray | None  # one row per document when reused; None: embed the texts
    note: str


def _jsonable(value: Any) -> Any:
    """Metadata values as JSON: sets and tuples become lists, dates ISO strings, bytes UTF-8 text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


def _record_list(content: Any, source: str) -> tuple[list[Any], list[str] | None]:
    """The records, and their ids when the pickle is a dict keyed by id."""
    if isinstance(content, list | tuple):
        return list(content), None
    if isinstance(content, Mapping):
        for key in _LIST_KEYS:
            if isinstance(content.get(key), list | tuple):
                return list(content[key]), None
        if content and all(isinstance(value, Mapping) for value in content.values()):
            return list(content.values()), [str(key) for key in content]
        raise SeedError(
            f"{source} holds a dict with keys {sorted(map(str, content))[:12]}: expected a list of "
            f"records, or a dict holding one under {' / '.join(repr(k) for k in _LIST_KEYS)}"
        )
    raise SeedError(f"{source} holds a {type(content).__name__}: expected a list of records or a dict")


def _first_text(
    record: Mapping[str, Any], fields: tuple[str, ...], skip: str | None = None
) -> tuple[str | None, str | None]:
    for field in fields:
        value = record.get(field)
        if field != skip and isinstance(value, str) and value.strip():
            return field, value
    return None, None


def _documents(records: list[Any], keyed_ids: list[str] | None, source: str) -> tuple[list[DocumentIn], list[int], str]:
    """Documents and the record positions they come from (records without text are skipped)."""
    parsed: list[tuple[int, str | None, dict[str, Any]]] = []
    skipped = 0
    for position, record in enumerate(records):
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, Mapping):
            raise SeedError(f"{source}: record {position} is a {type(record).__name__}, expected a dict")
        text_field, text = _first_text(record, _TEXT_FIELDS)
        if text is None:
            if any(isinstance(record.get(field), str) for field in _TEXT_FIELDS):
                skipped += 1  # present but blank
                continue
            raise SeedError(
                f"{source}: record {position} has no text field (looked for "
                f"{', '.join(_TEXT_FIELDS)}; it has {', '.join(sorted(map(str, record)))})"
            )
        title_field, title = _first_text(record, _TITLE_FIELDS, skip=text_field)
        id_value = next((record[f] for f in _ID_FIELDS if isinstance(record.get(f), str | int)), None)
        given_id = keyed_ids[position] if keyed_ids is not None else (None if id_value is None else str(id_value))
        source_field, doc_source = _first_text(record, _SOURCE_FIELDS)
        used = {text_field, title_field, source_field, "metadata", *_ID_FIELDS}
        metadata = {
            str(k): _jsonable(v)
            for k, v in record.items()
            if k not in used and (v is None or isinstance(v, str | bool | int | float | list | tuple))
        }
        if isinstance(record.get("metadata"), Mapping):
            metadata.update(_jsonable(record["metadata"]))
        fields: dict[str, Any] = {
            "text": text,
            "title": title[:1000] if title else None,
            "source": doc_source,
            "metadata": metadata,
        }
        parsed.append((position, given_id, fields))
    ids = [given for _, given, _ in parsed]
    notes = []
    if None in ids or len(set(ids)) != len(ids):
        if any(given is not None for given in ids):
            notes.append("the records' ids are missing or repeat, so documents are named seed-NNNNN by position")
        ids = [f"seed-{position:05d}" for position, _, _ in parsed]
    documents = []
    for (position, _, fields), doc_id in zip(parsed, ids, strict=True):
        try:
            documents.append(DocumentIn(id=str(doc_id), **fields))
        except ValidationError as exc:
            raise SeedError(
                f"{source}: record {position} is not a valid document: {exc.errors(include_url=False)[0]['msg']}"
            ) from None
    if skipped:
        notes.append(f"{skipped} record(s) with empty text were skipped")
    return documents, [position for position, _, _ in parsed], "; ".join(notes)


def _find(config: Any, keys: tuple[str, ...], kind: type) -> Any:
    if isinstance(config, Mapping):
        for key in keys:
            if isinstance(config.get(key), kind) and not isinstance(config.get(key), bool):
                return config[key]
        for value in config.values():
            found = _find(value, keys, kind)
            if found is not None:
                return found
    return None


def read_seed(
    index_data: bytes,
    metadata_data: bytes,
    config_data: bytes,
    *,
    embedder_id: str,
    embedder_names: set[str],
    dimension: int,
    index_name: str = "the index file",
    metadata_name: str = "the metadata file",
    config_name: str = "the config file",
) -> SeedImport:
    """Read the three seed files' contents and decide whether their vectors can be reused for a collection whose
    embedder is ``embedder_id`` (known as ``embedder_names``) of ``dimension``. Raises :class:`SeedError`."""
    try:
        config = json.loads(config_data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SeedError(f"{config_name} is not JSON: {exc}") from None
    records, keyed_ids = _record_list(load_pickle(metadata_data, metadata_name), metadata_name)
    documents, positions, notes = _documents(records, keyed_ids, metadata_name)
    if not documents:
        raise SeedError(f"{metadata_name} holds no record with text")

    model = _find(config, _MODEL_KEYS, str)
    reason = None
    vectors = None
    if model is None:
        reason = f"{config_name} names no embedding model"
    elif model_key(model) not in embedder_names:
        reason = f"the seed was embedded with '{model}' and this collection uses '{embedder_id}'"
    else:
        try:
            vectors = read_seed_vectors(index_data, index_name)
        except SeedIndexError as exc:
            reason = str(exc)
        else:
            if vectors.shape[1] != dimension:
                reason = f"{index_name} has {vectors.shape[1]}-dimensional vectors, '{embedder_id}' makes {dimension}"
            elif len(vectors) != len(records):
                reason = f"{index_name} holds {len(vectors)} vectors for {len(records)} records"
    if reason is not None:
        note = f"re-embedded the texts with '{embedder_id}': {reason}"
        return SeedImport(documents, None, f"{note}; {notes}" if notes else note)
    assert vectors is not None
    chosen = vectors[positions]
    norms = np.linalg.norm(chosen, axis=1, keepdims=True)
    chosen = np.ascontiguousarray(chosen / np.where(norms > 0, norms, 1), dtype=np.float32)
    note = f"reused the seed's vectors: it was embedded with '{model}', which is '{embedder_id}'"
    return SeedImport(documents, chosen, f"{note}; {notes}" if notes else note)
