"""Reading documents from files for ingestion: JSONL, CSV, Markdown and plain text. Folders are walked
(sorted, hidden files and folders skipped); files of other types are skipped and counted.

- ``.jsonl`` / ``.ndjson``: one JSON object a line with ``id`` and ``text``, optionally ``title``, ``source``
  and ``metadata`` (an object); any other field is an error (it would otherwise be silently dropped).
- ``.csv`` (UTF-8, header row): columns ``id`` and ``text`` are required, ``title`` and ``source`` optional;
  every other non-empty column goes into the metadata as a string.
- ``.md`` / ``.markdown``: one document per file. Its id is the path relative to the folder given (the file's
  stem for a file given directly), without the suffix, with ``/`` between folders; its title is the first
  ``# `` heading, which is left out of the text.
- ``.txt``: one document per file, id as for Markdown, no title.

A document without a ``source`` gets its file's path (relative to the folder given). Ids must be unique across
everything read; a repeat is an error naming both places.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from retriever.schemas import DocumentIn

__all__ = ["SUFFIXES", "LoadError", "Loaded", "read_documents", "read_file"]

_JSONL = (".jsonl", ".ndjson")
_MARKDOWN = (".md", ".markdown")
_TEXT = (".txt",)
_CSV = (".csv",)
SUFFIXES = (*_JSONL, *_CSV, *_MARKDOWN, *_TEXT)
_FIELDS = frozenset(DocumentIn.model_fields)


class LoadError(ValueError):
    """A file that cannot be read as documents; the message names the file (and line)."""


@dataclass
class Loaded:
    documents: list[DocumentIn] = field(default_factory=list)
    files: int = 0
    skipped_files: list[Path] = field(default_factory=list)
    blank: list[str] = field(default_factory=list)  # Markdown / text files with no text


def _document(where: str, fields: dict[str, Any]) -> DocumentIn:
    try:
        return DocumentIn.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(part) for part in first["loc"])
        raise LoadError(f"{where}: {loc + ': ' if loc else ''}{first['msg']}") from None


def _jsonl(path: Path, source: str) -> Iterator[DocumentIn]:
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LoadError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise LoadError(f"{where}: expected a JSON object with id and text")
            unknown = sorted(set(record) - _FIELDS)
            if unknown:
                raise LoadError(
                    f"{where}: unknown field(s) {', '.join(unknown)}; a document has id, text, title, "
                    "source and metadata (put anything else inside metadata)"
                )
            if isinstance(record.get("id"), int) and not isinstance(record.get("id"), bool):
                record["id"] = str(record["id"])
            record.setdefault("source", source)
            yield _document(where, record)


def _csv(path: Path, source: str) -> Iterator[DocumentIn]:
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        missing = [name for name in ("id", "text") if name not in columns]
        if missing:
            raise LoadError(
                f"{path}: missing column(s) {', '.join(missing)} (the header has {', '.join(columns) or 'nothing'})"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise LoadError(f"{where}: more values than header columns")
            fields: dict[str, Any] = {
                "id": row["id"],
                "text": row["text"],
                "title": row.get("title") or None,
                "source": row.get("source") or source,
            }
            fields["metadata"] = {
                name: value for name, value in row.items() if name not in _FIELDS and value not in (None, "")
            }
            yield _document(where, fields)


def _markdown(path: Path, doc_id: str, source: str) -> Iterator[DocumentIn]:
    content = path.read_text(encoding="utf-8-sig")
    lines = content.splitlines()
    title = None
    for i, line in enumerate(lines):
        if line.startswith("# "):
            title = line[2:].strip().rstrip("#").strip() or None
            content = "\n".join(lines[:i] + lines[i + 1 :])
            break
    if content.strip():
        yield _document(str(path), {"id": doc_id, "text": content.strip(), "title": title, "source": source})


def _text(path: Path, doc_id: str, source: str) -> Iterator[DocumentIn]:
    content = path.read_text(encoding="utf-8-sig")
    if content.strip():
        yield _document(str(path), {"id": doc_id, "text": content.strip(), "source": source})


def read_file(path: Path, root: Path | None = None) -> Iterator[DocumentIn]:
    """The documents of one file; ``root`` is the folder given by the user (ids and sources are relative to it).
    Raises :class:`LoadError`."""
    relative = path.relative_to(root) if root is not None else Path(path.name)
    source = relative.as_posix()
    doc_id = relative.with_suffix("").as_posix()
    suffix = path.suffix.lower()
    try:
        if suffix in _JSONL:
            yield from _jsonl(path, source)
        elif suffix in _CSV:
            yield from _csv(path, source)
        elif suffix in _MARKDOWN:
            yield from _markdown(path, doc_id, source)
        elif suffix in _TEXT:
            yield from _text(path, doc_id, source)
        else:
            raise LoadError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    except UnicodeDecodeError as exc:
        raise LoadError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LoadError(f"{path}: {exc.strerror or exc}") from None


def _walk(folder: Path) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def read_documents(paths: Sequence[Path]) -> Loaded:
    """Every document in ``paths`` (files, or folders walked). Raises :class:`LoadError` for a path that does
    not exist, an unreadable file, an invalid record or a repeated id."""
    loaded = Loaded()
    seen: dict[str, str] = {}
    for given in paths:
        files: list[tuple[Path, Path | None]]
        if given.is_dir():
            files = [(path, given) for path in _walk(given)]
        elif given.is_file():
            files = [(given, None)]
        else:
            raise LoadError(f"{given}: no such file or folder")
        for path, root in files:
            if path.suffix.lower() not in SUFFIXES:
                if root is None:
                    raise LoadError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
                loaded.skipped_files.append(path)
                continue
            loaded.files += 1
            count = 0
            for doc in read_file(path, root):
                count += 1
                if doc.id in seen:
                    raise LoadError(f"{path}: document id {doc.id!r} was already read from {seen[doc.id]}")
                seen[doc.id] = str(path)
                loaded.documents.append(doc)
            if count == 0 and path.suffix.lower() in (*_MARKDOWN, *_TEXT):
                loaded.blank.append(str(path))
    return loaded
