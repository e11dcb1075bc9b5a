"""Metadata filters: parsing and the inverted index (scalars, list membership, $in, AND)."""

from __future__ import annotations

import pytest

from retriever.filters import FilterError, MetadataIndex, metadata_keys, parse_filter


def build(docs: dict[int, dict[str, object]]) -> MetadataIndex:
    index = MetadataIndex()
    for chunk_id, metadata in docs.items():
        index.add(metadata_keys(metadata), [chunk_id])
    return index


DOCS = {
    1: {"category": "vpn", "tags": ["remote", "NWL Connect"], "level": 1},
    2: {"category": "vpn", "tags": ["remote"], "level": 2.0},
    3: {"category": "email", "tags": [], "level": True, "extra": {"nested": 1}},
    4: {"category": "printers", "audience": None},
}


def test_scalars_lists_in_and_and() -> None:
    index = build(DOCS)
    assert index.match(parse_filter({"category": "vpn"})) == {1, 2}
    assert index.match(parse_filter({"tags": "remote"})) == {1, 2}
    assert index.match(parse_filter({"tags": "NWL Connect", "category": "vpn"})) == {1}
    assert index.match(parse_filter({"category": {"$in": ["email", "printers", "nothing"]}})) == {3, 4}
    assert index.match(parse_filter({"level": 2})) == {2}  # 2.0 == 2, as in JSON
    assert index.match(parse_filter({"level": True})) == {3}  # true is not 1
    assert index.match(parse_filter({"level": 1})) == {1}
    assert index.match(parse_filter({"audience": None})) == {4}
    assert index.match(parse_filter({"category": "vpn", "level": 3})) == set()
    assert index.match(parse_filter({"missing": "x"})) == set()


def test_removal_leaves_no_stale_ids() -> None:
    index = build(DOCS)
    index.remove(metadata_keys(DOCS[1]), [1])
    assert index.match(parse_filter({"tags": "remote"})) == {2}
    assert index.match(parse_filter({"tags": "NWL Connect"})) == set()


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"tags": ["a", "b"]}, 'use {"\\$in"'),
        ({"level": {"$gt": 1}}, "unsupported operator"),
        ({"$or": [{"a": 1}]}, "not a metadata key"),
        ({"level": {"$in": []}}, "list of 1 to"),
        ({"level": {"$in": [{"x": 1}]}}, "not a string, number, boolean or null"),
    ],
)
def test_malformed_filters_say_what_to_send(conditions: dict[str, object], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(conditions)


def test_empty_filter_has_no_clauses() -> None:
    assert parse_filter(None) == [] and parse_filter({}) == []
