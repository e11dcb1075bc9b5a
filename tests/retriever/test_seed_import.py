"""Importing the replaced IT-support system's files: the restricted unpickler, the record layouts it accepts,
and an end-to-end import of a seed-shaped FAISS index + pickle + config built here with the real embedder."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from chat_common.errors import APIError
from retriever.embedder import Embedder
from retriever.schemas import CollectionSettings, SearchRequest
from retriever.seed_import import SeedError, UnsafePickle, load_pickle, read_seed
from tests.retriever.conftest import ServiceFactory

RECORDS = [
    {
        "question": "The printer says paper jam",
        "answer": "Open tray 2, pull the jammed sheet out gently and close it.",
        "category": "printers",
        "tags": ["jam"],
    },
    {
        "question": "How do I connect to the office VPN?",
        "answer": "Install NWL Connect and sign in with your NWL username; approve the prompt in NWL Authenticator.",
        "category": "vpn",
    },
    {
        "question": "My mailbox is full",
        "answer": "Move old mail to the online archive or empty Deleted Items.",
        "category": "email",
        "metadata": {"priority": "low"},
    },
    {
        "question": "Wi-Fi keeps dropping in meeting room 3",
        "answer": "Report the room to the Service Desk; meanwhile use the wired port under the table.",
        "category": "wifi",
    },
]
SEED_CONFIG = {"embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "dimension": 384, "top_k": 3}


class SystemCall:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class PopenCall:
    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["touch", "/nonexistent"],))


def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps([{"answer": "fine"}, SystemCall(f"touch {marker}")])
    with pytest.raises(UnsafePickle) as caught:
        load_pickle(payload, "it_support_metadata.pkl")
    assert str(caught.value) == (
        f"refusing to load '{os.system.__module__}.system' from it_support_metadata.pkl: "
        "only plain lists, dicts, strings and numbers are allowed"
    )
    assert not marker.exists()
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(UnsafePickle, match=r"refusing to load 'subprocess\.Popen'"):
            load_pickle(pickle.dumps({"documents": [PopenCall()]}, protocol=protocol), "m.pkl")
    sneaky = b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR."
    with pytest.raises(UnsafePickle, match=r"'builtins\.getattr'"):
        load_pickle(sneaky, "m.pkl")
    with pytest.raises(SeedError, match="not a readable pickle"):
        load_pickle(pickle.dumps(RECORDS)[:-5], "m.pkl")


def test_plain_pickles_load_with_their_values() -> None:
    content = {"documents": RECORDS, "tags": {"a", "b"}, "when": dt.datetime(2026, 3, 2, 9, 30), "ratio": 0.5}
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        assert load_pickle(pickle.dumps(content, protocol=protocol), "m.pkl") == content


def seed_files(
    folder: Path, embedder: Embedder, config: dict[str, Any], records: Any = None, scale: float = 2.0
) -> tuple[Path, Path, Path]:
    """A seed-shaped trio: an IndexFlatL2 of the records' vectors (scaled, as an un-normalised seed might store
    them), the records pickled, and the config."""
    records = RECORDS if records is None else records
    texts = [f"{r['question']} {r['answer']}" for r in RECORDS]
    vectors = embedder.encode(texts) * scale
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    folder.mkdir(parents=True, exist_ok=True)
    paths = (
        folder / "it_support_faiss_index.bin",
        folder / "it_support_metadata.pkl",
        folder / "it_support_config.json",
    )
    faiss.write_index(index, str(paths[0]))
    paths[1].write_bytes(pickle.dumps(records))
    paths[2].write_text(json.dumps(config))
    return paths


def test_record_layouts(embedder: Embedder, tmp_path: Path) -> None:
    index, _, _ = seed_files(tmp_path, embedder, SEED_CONFIG)
    names = {"all-minilm-l6-v2"}

    def read(content: Any, config: dict[str, Any] = SEED_CONFIG) -> Any:
        return read_seed(
            index.read_bytes(),
            pickle.dumps(content),
            json.dumps(config).encode(),
            embedder_id="all-minilm-l6-v2",
            embedder_names=names,
            dimension=384,
        )

    listed = read(RECORDS)
    first = listed.documents[0]
    assert (first.id, first.title, first.text) == ("seed-00000", RECORDS[0]["question"], RECORDS[0]["answer"])
    assert first.metadata == {"category": "printers", "tags": ["jam"]}
    assert listed.documents[2].metadata == {"category": "email", "priority": "low"}
    assert listed.vectors is not None and listed.vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(listed.vectors, axis=1), 1.0, atol=1e-5)  # re-normalised
    assert read({"metadata": RECORDS}).documents == listed.documents
    keyed = read({f"T-{i}": record for i, record in enumerate(RECORDS)})
    assert [d.id for d in keyed.documents] == ["T-0", "T-1", "T-2", "T-3"]
    texts = read([{"id": "a1", "subject": "Badge", "content": "Badges are at reception."}, "just text", *RECORDS[2:]])
    assert [(d.id, d.title) for d in texts.documents] == [
        ("seed-00000", "Badge"),
        ("seed-00001", None),
        ("seed-00002", RECORDS[2]["question"]),
        ("seed-00003", RECORDS[3]["question"]),
    ]
    assert "ids are missing or repeat" in texts.note

    other = read(RECORDS, {"model_name": "BAAI/bge-small-en-v1.5"})
    assert other.vectors is None
    assert other.note == (
        "re-embedded the texts with 'all-minilm-l6-v2': the seed was embedded with "
        "'BAAI/bge-small-en-v1.5' and this collection uses 'all-minilm-l6-v2'"
    )
    assert "names no embedding model" in read(RECORDS, {"top_k": 3}).note
    assert "holds 4 vectors for 3 records" in read(RECORDS[:3]).note
    with pytest.raises(SeedError, match="record 1 has no text field"):
        read([RECORDS[0], {"question": "no answer here"}])
    with pytest.raises(SeedError, match="expected a list of records"):
        read({"version": 2, "count": 4})


async def test_seed_import_reuses_vectors_end_to_end(
    make_service: ServiceFactory, embedder: Embedder, tmp_path: Path
) -> None:
    service = await make_service()
    await service.put_collection("seed", CollectionSettings())
    files = seed_files(tmp_path / "seed", embedder, SEED_CONFIG)
    before = (
        service.metrics.registry.get_sample_value("retriever_embedded_texts_total", {"embedder": "all-minilm-l6-v2"})
        or 0
    )
    result = await service.import_seed_files("seed", *files)
    assert (result.documents, result.upserted, result.chunks, result.vectors) == (4, 4, 4, "reused")
    assert result.note == (
        "reused the seed's vectors: it was embedded with "
        "'sentence-transformers/all-MiniLM-L6-v2', which is 'all-minilm-l6-v2'"
    )
    after = (
        service.metrics.registry.get_sample_value("retriever_embedded_texts_total", {"embedder": "all-minilm-l6-v2"})
        or 0
    )
    assert after == before  # nothing embedded

    found = (await service.search("seed", SearchRequest(query="paper stuck in the printer", top_k=1))).data[0]
    assert (found.doc_id, found.title, found.metadata["category"]) == ("seed-00000", RECORDS[0]["question"], "printers")
    query = embedder.encode(["paper stuck in the printer"])[0]
    seed_vector = embedder.encode([f"{RECORDS[0]['question']} {RECORDS[0]['answer']}"])[0]
    assert found.score == pytest.approx(float(query @ seed_vector), abs=1e-4)

    again = await service.import_seed_files("seed", *files)
    assert (again.upserted, again.unchanged) == (0, 4)

    other = seed_files(tmp_path / "other", embedder, {"model": "text-embedding-3-small"})
    reembedded = await service.import_seed_files("seed", *other)
    assert reembedded.vectors == "re-embedded" and "'text-embedding-3-small'" in reembedded.note
    assert reembedded.upserted == 4 and reembedded.chunks == 4  # short answers: one chunk each
    vpn = (await service.search("seed", SearchRequest(query="VPN setup", top_k=1))).data[0]
    assert vpn.doc_id == "seed-00001" and vpn.text == RECORDS[1]["answer"]

    malicious = tmp_path / "bad.pkl"
    malicious.write_bytes(pickle.dumps([SystemCall(f"touch {tmp_path / 'ran'}")]))
    with pytest.raises(APIError) as caught:
        await service.import_seed_files("seed", files[0], malicious, files[2])
    assert caught.value.status_code == 400 and "refusing to load" in caught.value.message
    assert not (tmp_path / "ran").exists()
    assert service.get_collection("seed").documents == 4
