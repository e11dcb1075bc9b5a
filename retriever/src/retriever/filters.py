"""Metadata filters: parsing a search's ``filter`` and the inverted index that answers it.

A filter is a JSON object of conditions, all of which must hold (AND):

- ``{"key": value}``: the document's metadata ``key`` equals ``value`` (a string, number, boolean or null), or
  is a list that contains it (``{"tags": "vpn"}`` matches ``"tags": ["vpn", "remote"]``);
- ``{"key": {"$in": [v1, v2, ...]}}``: the same for any of the values.

Values compare as JSON does: ``1`` and ``1.0`` are equal, ``1``, ``true`` and ``"1"`` are not. Nested objects
in metadata are stored and returned but cannot be filtered on.

:class:`MetadataIndex` maps each (key, value) pair to the ids of the chunks whose document has it, so a search
finds the chunks a filter allows by a few set operations instead of reading every document's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MAX_IN_VALUES", "Clause", "FilterError", "MetadataIndex", "metadata_keys", "parse_filter"]

MAX_IN_VALUES = 1024

Key = tuple[str, str]
Clause = tuple[str, tuple[str, ...]]
"""One condition: the metadata key and the canonical forms of the values it may take (any of them)."""


class FilterError(ValueError):
    """A filter this module cannot answer; the message says what to send instead."""


def _canonical(value: Any) -> str | None:
    """The value's canonical JSON, or ``None`` when it is not a scalar (and so not indexed)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value, ensure_ascii=False)
    return None


def metadata_keys(metadata: Mapping[str, Any]) -> frozenset[Key]:
    """Every (key, canonical value) pair a filter can match in this metadata."""
    keys = set()
    for field, value in metadata.items():
        for item in value if isinstance(value, list) else (value,):
            canonical = _canonical(item)
            if canonical is not None:
                keys.add((field, canonical))
    return frozenset(keys)


def parse_filter(conditions: Mapping[str, Any] | None) -> list[Clause]:
    """The clauses of a search filter (none for ``None`` or ``{}``); :class:`FilterError` when it is malformed."""
    clauses: list[Clause] = []
    for field, wanted in (conditions or {}).items():
        if not field or field.startswith("$"):
            raise FilterError(
                f"filter key {field!r} is not a metadata key: operators such as $and or $or are not "
                'supported (several keys are AND-ed; use {"key": {"$in": [...]}} for OR)'
            )
        if isinstance(wanted, dict):
            if set(wanted) != {"$in"}:
                raise FilterError(
                    f"filter on {field!r}: unsupported operator(s) {sorted(wanted)}; use a plain value "
                    'or {"$in": [values]}'
                )
            values = wanted["$in"]
            if not isinstance(values, list) or not values or len(values) > MAX_IN_VALUES:
                raise FilterError(f"filter on {field!r}: $in takes a list of 1 to {MAX_IN_VALUES} values")
        elif isinstance(wanted, list):
            raise FilterError(
                f'filter on {field!r}: a list is ambiguous; to match any of several values use {{"$in": [values]}}'
            )
        else:
            values = [wanted]
        canonical = []
        for value in values:
            form = _canonical(value)
            if form is None:
                raise FilterError(f"filter on {field!r}: {json.dumps(value)} is not a string, number, boolean or null")
            canonical.append(form)
        clauses.append((field, tuple(dict.fromkeys(canonical))))
    return clauses


class MetadataIndex:
    """(key, value) -> chunk ids, for the chunks currently in the collection. Not thread-safe: the collection
    guards it with its lock."""

    def __init__(self) -> None:
        self._postings: dict[Key, set[int]] = {}

    def add(self, keys: Iterable[Key], ids: Iterable[int]) -> None:
        ids = list(ids)
        for key in keys:
            self._postings.setdefault(key, set()).update(ids)

    def remove(self, keys: Iterable[Key], ids: Iterable[int]) -> None:
        ids = list(ids)
        for key in keys:
            posting = self._postings.get(key)
            if posting is not None:
                posting.difference_update(ids)
                if not posting:
                    del self._postings[key]

    def match(self, clauses: list[Clause]) -> set[int]:
        """Ids of the chunks that satisfy every clause (a fresh set the caller may keep)."""
        matched: set[int] | None = None
        per_clause = []
        for field, values in clauses:
            postings = [self._postings.get((field, value)) for value in values]
            found = [posting for posting in postings if posting]
            if not found:
                return set()
            per_clause.append(found)
        # the smallest clause first: every intersection after it is at most that big
        per_clause.sort(key=lambda found: sum(len(posting) for posting in found))
        for found in per_clause:
            union = found[0] if len(found) == 1 else set().union(*found)
            if matched is None:
                matched = set(union)
            else:
                matched.intersection_update(union)
            if not matched:
                return set()
        return matched if matched is not None else set()
