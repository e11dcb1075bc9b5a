"""The embedding worker with the real all-MiniLM-L6-v2: batching reorders texts by length for speed, and the
caller must not see it."""

from __future__ import annotations

import numpy as np

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
    assert tokens == [embedder.count_tokens([text])[0] for text in TEXTS]
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
