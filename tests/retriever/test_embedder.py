"""The embedding worker with the real all-MiniLM-L6-v2: batching reorders texts by length for speed, and the
caller must not see it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from retriever.embedder import INGEST, Embedder, EmbeddingWorker

TEXTS = [
    "VPN",
    "How do I reset my password when the self-service portal says my account is locked after too many tries?",
    "printer jam",
    "Outlook keeps asking for my password after the update, even though I typed it correctly three times.",
    "wifi",
    "laptop battery drains overnight while the lid is closed",
    "A",
]


async def test_batches_by_length_but_answers_in_the_order_given(embedder: Embedder) -> None:
    batches: list[int] = []
    worker = EmbeddingWorker(batch_size=2, on_batch=lambda _id, n: batches.append(n))
    try:
        vectors, tokens = await worker.encode(embedder, TEXTS, INGEST, with_tokens=True)
    finally:
        worker.close()

    assert batches == [2, 2, 2, 1]
    one_by_one = np.concatenate([embedder.encode([text]) for text in TEXTS])
    assert vectors.shape == one_by_one.shape
    # Each row is its own text's vector: closest to it and to no other row.
    similarity = vectors @ one_by_one.T
    assert list(similarity.argmax(axis=1)) == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-4)
    tokenizer = embedder._model.tokenizer
    assert tokens == [
        len(tokenizer(text, truncation=True, max_length=embedder.max_tokens)["input_ids"]) for text in TEXTS
    ]
    assert tokens[0] < tokens[1]  # "VPN" vs a long question: the counts really are per text


async def test_without_token_counts_returns_vectors_only(embedder: Embedder) -> None:
    worker = EmbeddingWorker(batch_size=3)
    try:
        vectors, tokens = await worker.encode(embedder, TEXTS[:4])
    finally:
        worker.close()
    assert vectors.shape == (4, embedder.dimension)
    assert tokens == []


def test_encode_gives_what_sentence_transformers_gives(embedder: Embedder) -> None:
    """The embedder runs the model's pipeline itself (without encode()'s per-call overhead): same vectors."""
    ours = embedder.encode(TEXTS, batch_size=3)
    theirs = embedder._model.encode(TEXTS, batch_size=3, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), embedder.dimension)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert embedder.encode(["VPN"]).shape == (1, embedder.dimension)


def test_onnx_backend_gives_the_same_vectors_and_exports_once(
    embedder: Embedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx_dir = tmp_path / "onnx"
    caplog.set_level(logging.INFO, logger="retriever.onnx_backend")
    first = Embedder(embedder.id, embedder.path, onnx_dir=onnx_dir)
    first.load()
    assert first.backend == "onnxruntime" and embedder.backend == "torch"
    (exported,) = onnx_dir.glob("*.onnx")
    assert sum("exporting" in r.getMessage() for r in caplog.records) == 1
    np.testing.assert_allclose(first.encode(TEXTS, batch_size=3), embedder.encode(TEXTS, batch_size=3), atol=1e-5)

    caplog.clear()
    stamp = exported.stat().st_mtime_ns
    second = Embedder(embedder.id, embedder.path, onnx_dir=onnx_dir)
    second.load()  # a restart: the cached export is used as it is
    assert second.backend == "onnxruntime" and exported.stat().st_mtime_ns == stamp
    assert not any("exporting" in r.getMessage() for r in caplog.records)
    assert list(onnx_dir.iterdir()) == [exported]  # no temporary file left behind
    np.testing.assert_array_equal(second.encode(["VPN"]), first.encode(["VPN"]))


def test_a_model_that_cannot_run_in_onnx_runtime_stays_on_torch(
    embedder: Embedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the export folder should be")
    fallback = Embedder(embedder.id, embedder.path, onnx_dir=blocked)
    fallback.load()
    assert fallback.backend == "torch"
    assert any("could not run in ONNX Runtime" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(fallback.encode(TEXTS), embedder.encode(TEXTS), atol=1e-6)
