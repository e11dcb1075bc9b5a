"""Retrieval benchmarks of the retriever service (port 8003), each one against the real service started as a
subprocess on a free port with a temporary ``RETRIEVER_DATA_DIR`` and default settings, driven over HTTP.
(One script of three modes sharing the service harness and the report format, hence its length.)

    .venv/bin/python bench/retrieval.py quality [--top-k 20]
    .venv/bin/python bench/retrieval.py scale [--chunks 100000] [--queries 600] [--ef 64,128,256,512]
    .venv/bin/python bench/retrieval.py ingest [--chunks 2000]

``quality``: answer quality on the IT-support evaluation set. The 74 articles of ``data/it-support/articles.jsonl``
go into a fresh collection created with the service's defaults (chunk_size 800, overlap 120, all-MiniLM-L6-v2,
exact index); each of the 151 questions of ``eval.jsonl`` is searched with ``top_k`` 20. The chunk hits become a
document ranking: each document at the rank of its best chunk (its first occurrence in the hit list), later
chunks of the same document dropped. With ``rel`` the question's relevant document ids and ``d_1, d_2, ...`` the
ranking, per question:

- recall@3 = |rel ∩ {d_1, d_2, d_3}| / |rel|
- nDCG@10 = DCG / IDCG, DCG = sum over i <= 10 with d_i in rel of 1 / log2(i + 1), IDCG the same sum for a
  ranking that puts every relevant document first (binary relevance)
- hit@1 = 1 if d_1 is relevant, else 0
- MRR = 1 / (rank of the first relevant document), 0 when none is among the hits
  (so this is MRR over the top 20 chunks)

and the figures are the means over the questions. Baseline, same run: the same chunks (the retriever's own
chunking, ``title + "\\n\\n" + chunk`` embedded) and questions embedded in this process with sentence-transformers
and ranked by exact cosine with numpy: the service should lose nothing against it.

``scale``: search at 100k chunks. Embedding 100k chunks of 800 characters on two cores would take close to an
hour (``ingest`` measures about 33 a second), so these chunks are short and synthetic but made of real text:
the 74 articles are cut into sentences (lines, then sentence ends; list markers dropped; 25 characters or more;
duplicates removed) and each chunk is 2 or 3 distinct sentences in random order, all from one article picked
at random, except that each sentence after the first comes from another random article with probability 0.2;
drawn with a seeded ``random.Random`` until the wanted number of distinct texts (~200 characters each). Each
becomes a document without a title (so exactly its text is embedded): real all-MiniLM-L6-v2 vectors of
IT-support text, and search cost does not depend on chunk length. They are ingested through
``POST /v1/collections/{name}/documents`` (1000 per request), so the default ``auto`` index turns into HNSW past
``RETRIEVER_EXACT_MAX_CHUNKS`` (20000) as it would for a user, and the ingest rate is reported (that first run
takes about 25 minutes on two idle cores). The vectors are then cached under ``var/bench/`` (git-ignored, keyed
by a hash of the texts; 150 MB for 100k); later runs load the same collection through the seed import endpoint
(``POST .../import``, which reuses the vectors) instead of embedding again, unless ``--reembed``.

Queries: the 151 evaluation questions, then synthetic texts drawn by the same process that are not in the
collection, up to ``--queries``; after 20 warm-up searches, each is sent alone (a sequential client, keep-alive
connection, ``top_k`` 10), timed from request to parsed answer. Each HTTP pass runs on a freshly started
service over the same data folder (it opens the collection from its files), ``--rounds`` passes with the
default settings and as many with the variables of ``--compare-env`` (default ``RETRIEVER_ONNX=false``: the
embedder's transformer in torch instead of ONNX Runtime), the two alternating. Then, with no service running,
each query is embedded with the retriever's ``Embedder`` as the service runs it (timed: the embedding part)
and searched with the retriever's own ``Collection`` opened on the service's data folder (timed: the index
part, with the SQLite fetch of the hits), once per ``--ef`` value, and once more with the collection forced to
an exact flat index over the same stored vectors: the baseline, and the ground truth. recall@10 =
|approximate top 10 ∩ exact top 10| / 10, averaged over the queries; for the HTTP rows the approximate top 10 is
the service's answer (first round).

``ingest``: ingestion throughput. Copies of the articles, each with its paragraphs in a seeded random order
(so every copy is new text and chunks differently), up to ``--chunks`` chunks, are upserted through
``POST .../documents`` 128 documents per request (the CLI's default), timed from the first request to the last
answer: chunks/s covers chunking, embedding, SQLite, FAISS and HTTP. Baseline, same run, while the service is
idle: ``SentenceTransformer.encode()`` in this process on exactly the texts the service embeds (the
retriever's chunking, ``title + "\\n\\n" + chunk``), batch size 32, as one call over all texts (it sorts them
by length before batching). Two more raw passes show what sorting is worth: the texts in 32-text slices in
document order (padding to the longest chunk of each slice), and one call per request's texts (sorted by length
within each request, as the service's embedding worker sorts them).

Percentiles are numpy's (linear interpolation). Every table also records the load average, since the two
cores may be shared with other work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from bench.machine import describe  # noqa: E402
from retriever.chunking import split_text  # noqa: E402
from retriever.collection import DB_FILE, Collection, IndexPolicy, embedding_input  # noqa: E402
from retriever.config import Settings  # noqa: E402
from retriever.index import HNSWParams  # noqa: E402
from tests.services import free_port, start_service  # noqa: E402

DATA = ROOT / "data" / "it-support"
CACHE = ROOT / "var" / "bench"
SEED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WARMUP = 20

# -- shared helpers ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class Retriever:
    """The real service on a free port, its data folder in a temporary directory, and an HTTP client."""

    def __init__(self, data_dir: Path, logs: Path, env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.data_dir = data_dir
        self.service = start_service(
            "retriever",
            ["-m", "retriever"],
            {"RETRIEVER_PORT": str(port), "RETRIEVER_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **(env or {})},
            port,
            logs,
            timeout_s=600,
        )
        self.client = httpx.Client(base_url=self.service.url, timeout=None)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def create(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return (
            self.call("PUT", f"/v1/collections/{name}", json=body)
            if body
            else self.call("PUT", f"/v1/collections/{name}")
        )

    def upsert(self, name: str, documents: list[dict[str, Any]]) -> dict[str, Any]:
        return self.call("POST", f"/v1/collections/{name}/documents", json={"documents": documents})

    def search(self, name: str, query: str, top_k: int) -> list[dict[str, Any]]:
        return self.call("POST", f"/v1/collections/{name}/search", json={"query": query, "top_k": top_k})["data"]

    def info(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/collections/{name}")

    def stop(self) -> None:
        self.client.close()
        self.service.stop()


@contextmanager
def retriever(logs: Path, data_dir: Path, env: dict[str, str] | None = None) -> Iterator[Retriever]:
    """The service on ``data_dir``, its log in ``logs``; stopped (index files written) on the way out."""
    log(f"starting the retriever on {data_dir}" + (f" with {env}" if env else ""))
    service = Retriever(data_dir, logs, env)
    try:
        yield service
    finally:
        service.stop()


def temporary(prefix: str) -> tuple[Path, Path]:
    """A fresh temporary folder for logs, and the data folder inside it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    return folder, folder / "data"


def sentence_transformer() -> Any:
    """The bundled all-MiniLM-L6-v2 as a plain SentenceTransformer in this process (the baselines)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    from retriever.embedder import bundled_model_path

    transformers_logging.disable_progress_bar()
    return SentenceTransformer(bundled_model_path(), device="cpu")


def load_embedder(onnx_dir: Path | None) -> Any:
    """The retriever's own Embedder of the bundled model, loaded in this process, on ONNX Runtime when given the
    service's export folder (as the service runs it by default)."""
    from retriever.embedder import Embedder, bundled_model_path

    embedder = Embedder(
        "all-minilm-l6-v2", bundled_model_path(), torch_threads=Settings().torch_threads, onnx_dir=onnx_dir
    )
    embedder.load()
    return embedder


# -- quality ------------------------------------------------------------------------------------------------------


def doc_ranking(doc_ids: Sequence[str]) -> list[str]:
    """Documents in the order of their first chunk among the hits."""
    return list(dict.fromkeys(doc_ids))


def score(ranking: Sequence[str], relevant: Sequence[str]) -> dict[str, float]:
    rel = set(relevant)
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranking[:10]) if doc in rel)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
    first = next((i + 1 for i, doc in enumerate(ranking) if doc in rel), None)
    return {
        "recall@3": len(rel & set(ranking[:3])) / len(rel),
        "ndcg@10": dcg / idcg,
        "hit@1": float(bool(ranking) and ranking[0] in rel),
        "mrr": 1 / first if first else 0.0,
    }


def mean_scores(per_question: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([s[key] for s in per_question])) for key in per_question[0]}


def reference_rankings(
    articles: list[dict[str, Any]], questions: list[dict[str, Any]], chunk_size: int, overlap: int, top_k: int
) -> list[list[str]]:
    """The baseline: same chunks and embedder, embedded here, exact cosine with numpy."""
    model = sentence_transformer()
    owners, inputs = [], []
    for article in articles:
        for chunk in split_text(article["text"], chunk_size, overlap):
            owners.append(article["id"])
            inputs.append(embedding_input(article.get("title"), chunk.text))
    chunks = model.encode(inputs, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    queries = model.encode(
        [q["question"] for q in questions], batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    )
    rankings = []
    for row in queries @ chunks.T:
        order = np.lexsort((np.arange(len(row)), -row))[:top_k]
        rankings.append(doc_ranking([owners[i] for i in order]))
    return rankings


def run_quality(args: argparse.Namespace) -> None:
    articles = load_jsonl(DATA / "articles.jsonl")
    questions = load_jsonl(DATA / "eval.jsonl")
    name = "it-support"
    with retriever(*temporary("bench-retrieval-quality-")) as service:
        info = service.create(name)
        documents = [
            {"id": a["id"], "title": a["title"], "text": a["text"], "metadata": a.get("metadata") or {}}
            for a in articles
        ]
        started = time.perf_counter()
        upserted = service.upsert(name, documents)
        ingest_s = time.perf_counter() - started
        info = service.info(name)
        log(
            f"ingested {upserted['upserted']} articles as {upserted['chunks']} chunks in {ingest_s:.1f} s; "
            f"searching {len(questions)} questions"
        )
        rankings = [
            doc_ranking([hit["doc_id"] for hit in service.search(name, q["question"], args.top_k)]) for q in questions
        ]
    per_question = [score(r, q["relevant"]) for r, q in zip(rankings, questions, strict=True)]
    figures = mean_scores(per_question)
    reference = None
    if args.reference:
        log("baseline: embedding the same chunks in this process")
        ref_rankings = reference_rankings(articles, questions, info["chunk_size"], info["chunk_overlap"], args.top_k)
        reference = mean_scores([score(r, q["relevant"]) for r, q in zip(ref_rankings, questions, strict=True)])

    print(f"\nmachine: {describe()}; load average {loadavg()}")
    print(
        f"collection: {info['documents']} articles, {info['chunks']} chunks, embedder {info['embedder']}, "
        f"chunk_size {info['chunk_size']}, overlap {info['chunk_overlap']}, index {info['index']}; "
        f"{len(questions)} questions, top_k {args.top_k} chunks per search\n"
    )
    keys = ["recall@3", "ndcg@10", "hit@1", "mrr"]
    print("| path | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    print("| retriever service over HTTP | " + " | ".join(f"{figures[k]:.3f}" for k in keys) + " |")
    if reference:
        print(
            "| baseline: same chunks, sentence-transformers + exact cosine in-process | "
            + " | ".join(f"{reference[k]:.3f}" for k in keys)
            + " |"
        )
        print(
            "\nservice/baseline: "
            + ", ".join(f"{k} {figures[k] / reference[k]:.3f}x" if reference[k] else f"{k} n/a" for k in keys)
        )
    misses = [(q, r, s) for q, r, s in zip(questions, rankings, per_question, strict=True) if s["recall@3"] < 1]
    print(f"\nquestions with recall@3 < 1: {len(misses)} of {len(questions)}")
    for q, r, s in misses[: args.show_misses]:
        print(f"  {q['id']} relevant {q['relevant']} top-3 {r[:3]} recall@3 {s['recall@3']:.2f}: {q['question']}")
    status = "met" if figures["recall@3"] >= 0.9 else "NOT met"
    print(f"\ntarget recall@3 >= 0.9: {figures['recall@3']:.3f} ({status})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"service": figures, "baseline": reference, "info": info, "per_question": per_question}, indent=2
            )
        )


# -- scale --------------------------------------------------------------------------------------------------------

_LIST_MARKER = re.compile(r"^(?:\d+[.)]|[-*\u2022])\s+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z\"'(])")  # not before a digit: "ext. 4357"


def sentences_by_article(articles: list[dict[str, Any]], min_chars: int = 25) -> list[tuple[str, list[str]]]:
    seen: set[str] = set()
    out = []
    for article in articles:
        found = []
        for line in article["text"].splitlines():
            line = _LIST_MARKER.sub("", line.strip())
            for sentence in _SENTENCE_BREAK.split(line):
                sentence = sentence.strip()
                if len(sentence) >= min_chars and sentence not in seen:
                    seen.add(sentence)
                    found.append(sentence)
        if len(found) >= 3:
            out.append((article["id"], found))
    return out


def synthetic_texts(
    articles: list[dict[str, Any]], seed: int, exclude: frozenset[str] = frozenset()
) -> Iterator[tuple[str, str]]:
    """Endless distinct (text, article id) pairs, none of them in ``exclude``."""
    pool = sentences_by_article(articles)
    rng = random.Random(seed)
    seen = set(exclude)
    while True:
        article_id, own = pool[rng.randrange(len(pool))]
        parts = [rng.choice(own)]
        for _ in range(rng.choice((1, 2))):
            source = own if rng.random() >= 0.2 else pool[rng.randrange(len(pool))][1]
            candidate = rng.choice(source)
            if candidate not in parts:
                parts.append(candidate)
        if len(parts) < 2:
            continue
        text = " ".join(parts)
        if text in seen:
            continue
        seen.add(text)
        yield text, article_id


def cache_path(texts: Sequence[str]) -> Path:
    digest = hashlib.sha256()
    digest.update(SEED_MODEL_NAME.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    return CACHE / f"retrieval-scale-{len(texts)}-{digest.hexdigest()[:16]}.npy"


def chunk_labels(data_dir: Path, name: str) -> dict[int, str]:
    """Chunk row id -> the ``doc#n`` label the HTTP API returns, read from the collection's SQLite file."""
    db = sqlite3.connect(f"file:{data_dir / name / DB_FILE}?mode=ro", uri=True)
    try:
        return {row_id: f"{doc}#{n}" for row_id, doc, n in db.execute("SELECT id, doc_id, chunk_no FROM chunks")}
    finally:
        db.close()


def stored_vectors(data_dir: Path, name: str, doc_ids: Sequence[str]) -> np.ndarray:
    """The stored vectors in the order of ``doc_ids`` (one chunk each), read with the retriever's store module."""
    from retriever.store import CollectionStore

    store = CollectionStore.open(data_dir / name / DB_FILE)
    try:
        ids, vectors = store.vectors(store.config().dimension)
    finally:
        store.close()
    labels = chunk_labels(data_dir, name)
    position = {label.rsplit("#", 1)[0]: i for i, label in ((i, labels[int(r)]) for i, r in enumerate(ids))}
    return np.ascontiguousarray(vectors[[position[d] for d in doc_ids]])


def ingest_documents(service: Retriever, name: str, documents: list[dict[str, Any]], batch: int) -> float:
    """Upsert in batches of ``batch``, printing progress; returns the seconds taken."""
    started = time.perf_counter()
    done = 0
    for i in range(0, len(documents), batch):
        result = service.upsert(name, documents[i : i + batch])
        done += result["chunks"]
        elapsed = time.perf_counter() - started
        rate = done / elapsed
        if (i // batch) % 5 == 4 or i + batch >= len(documents):
            log(
                f"ingested {done}/{len(documents)} chunks, {rate:.1f}/s, about "
                f"{(len(documents) - done) / rate / 60:.1f} min left; load average {loadavg()}"
            )
    return time.perf_counter() - started


def import_cached(service: Retriever, name: str, documents: list[dict[str, Any]], vectors: np.ndarray) -> float:
    """Load the collection through the seed import endpoint with the cached vectors; returns the seconds."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    files = {
        "index": ("bench.faiss", faiss.serialize_index(index).tobytes(), "application/octet-stream"),
        "metadata": ("bench.pkl", pickle.dumps(documents, protocol=4), "application/octet-stream"),
        "config": ("bench.json", json.dumps({"embedding_model": SEED_MODEL_NAME}).encode(), "application/json"),
    }
    started = time.perf_counter()
    result = service.call("POST", f"/v1/collections/{name}/import", files=files)
    if result["vectors"] != "reused" or result["chunks"] != len(documents):
        raise RuntimeError(f"the import did not reuse the cached vectors: {result}")
    return time.perf_counter() - started


def in_process_search(
    folder: Path, policy: IndexPolicy, vectors: np.ndarray, top_k: int
) -> tuple[str, list[float], list[list[str]], float]:
    """Open the collection with ``policy`` in this process and search every vector: (index kind, ms per search,
    chunk labels per search, seconds to open)."""
    started = time.perf_counter()
    collection = Collection.open(folder, policy)
    opened = time.perf_counter() - started
    try:
        for vector in vectors[:WARMUP]:
            collection.search(vector, top_k)
        times, found = [], []
        for vector in vectors:
            t = time.perf_counter()
            hits = collection.search(vector, top_k)
            times.append((time.perf_counter() - t) * 1000)
            found.append([hit.chunk_id for hit in hits])
        return collection.index_kind, times, found, opened
    finally:
        collection.close()


def recall(approximate: Sequence[Sequence[str]], exact: Sequence[Sequence[str]], k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approximate, exact, strict=True)]))


def http_pass(
    service: Retriever, name: str, warmup: Sequence[str], queries: Sequence[str], top_k: int
) -> tuple[list[float], list[list[str]], str]:
    """Warm up, then search each query alone: (ms per search, chunk labels per search, load averages)."""
    for query in warmup:
        service.search(name, query, top_k)
    before = loadavg()
    times, found = [], []
    for query in queries:
        t = time.perf_counter()
        hits = service.search(name, query, top_k)
        times.append((time.perf_counter() - t) * 1000)
        found.append([hit["chunk_id"] for hit in hits])
    return times, found, f"{before} -> {loadavg()}"


def parse_env(spec: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in spec.split(",") if item.strip())


def run_scale(args: argparse.Namespace) -> None:
    articles = load_jsonl(DATA / "articles.jsonl")
    questions = [q["question"] for q in load_jsonl(DATA / "eval.jsonl")]
    settings = Settings()
    name = "scale"
    top_k = 10
    log(f"making {args.chunks} synthetic chunks and {max(args.queries - len(questions), 0) + WARMUP} held-out texts")
    stream = synthetic_texts(articles, args.seed, exclude=frozenset(questions))
    pairs = [next(stream) for _ in range(args.chunks)]
    texts = [text for text, _ in pairs]
    heldout = [next(stream)[0] for _ in range(max(args.queries - len(questions), 0) + WARMUP)]
    warmup, synthetic = heldout[:WARMUP], heldout[WARMUP:]
    queries = (questions + synthetic)[: args.queries]
    kinds = ["question" if i < len(questions) else "synthetic" for i in range(len(queries))]
    documents = [
        {"id": f"syn-{i:06d}", "text": text, "metadata": {"article": article}}
        for i, (text, article) in enumerate(pairs)
    ]
    doc_ids = [d["id"] for d in documents]
    log(f"chunk texts: mean {np.mean([len(t) for t in texts]):.0f} characters")
    cached = cache_path(texts)
    workdir = Path(tempfile.mkdtemp(prefix="bench-retrieval-scale-"))
    data_dir = workdir / "data"

    with retriever(workdir, data_dir) as service:
        service.create(name)
        load_before = loadavg()
        if cached.exists() and not args.reembed:
            log(f"importing the cached vectors from {cached.relative_to(ROOT)}")
            load_s = import_cached(service, name, documents, np.load(cached))
            how = (
                f"seed import of the cached vectors (no embedding; includes building HNSW): {load_s:.1f} s, "
                f"{args.chunks / load_s:.0f} chunks/s"
            )
        else:
            log(f"ingesting {args.chunks} chunks through the service (embedding them: this is the long step)")
            load_s = ingest_documents(service, name, documents, args.batch)
            how = (
                f"ingest through POST .../documents, {args.batch} docs per request: {load_s:.0f} s, "
                f"{args.chunks / load_s:.1f} chunks/s (embedding + SQLite + FAISS incl. the switch to HNSW)"
            )
            CACHE.mkdir(parents=True, exist_ok=True)
            np.save(cached, stored_vectors(data_dir, name, doc_ids))
            log(f"cached the vectors in {cached.relative_to(ROOT)}")
        how += f"; load average {load_before} -> {loadavg()}"
        info = service.info(name)
        if info["chunks"] != args.chunks or info["index"] != "hnsw":
            raise RuntimeError(f"expected {args.chunks} chunks in an HNSW index, got {info}")

    # HTTP passes: a fresh service on the same data folder per pass, configurations alternating across rounds
    configs = {"default settings": {}}
    if args.compare_env:
        configs[f"with {args.compare_env.replace(',', ' ')}"] = parse_env(args.compare_env)
    http: dict[str, tuple[list[float], list[list[str]], list[str]]] = {label: ([], [], []) for label in configs}
    for round_ in range(args.rounds):
        order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
        for label in order:
            with retriever(workdir, data_dir, configs[label]) as service:
                log(f"round {round_ + 1}/{args.rounds}, {label}: {len(queries)} searches over HTTP")
                times, found, loads = http_pass(service, name, warmup, queries, top_k)
            http[label][0].extend(times)
            if round_ == 0:
                http[label][1].extend(found)
            http[label][2].append(loads)
            log(f"  p50 {pct(times, 50):.2f} ms, p95 {pct(times, 95):.2f} ms; load average {loads}")

    # the in-process split, on the same folder (no service running)
    folder = data_dir / name
    embedders = [load_embedder(data_dir / "onnx" if settings.onnx else None)]
    if settings.onnx:
        embedders.append(load_embedder(None))  # the baseline the ONNX Runtime path is measured against
    embed_ms: dict[str, list[float]] = {}
    for embedder in embedders:
        log(f"in-process: embedding the queries with the retriever's Embedder ({embedder.backend})")
        for query in warmup:
            embedder.encode([query])
        times_ms, vectors = [], []
        for query in queries:
            t = time.perf_counter()
            vectors.append(embedder.encode([query])[0])
            times_ms.append((time.perf_counter() - t) * 1000)
        embed_ms[embedder.backend] = times_ms
        if embedder is embedders[0]:
            query_vectors = np.stack(vectors)  # what the service searches with
    sweep: dict[int, tuple[list[float], list[list[str]]]] = {}
    for ef in args.ef:
        policy = IndexPolicy(
            settings.exact_max_chunks,
            HNSWParams(settings.hnsw_m, settings.hnsw_ef_construction, ef),
            settings.tombstone_rebuild_fraction,
        )
        kind, times, found, opened = in_process_search(folder, policy, query_vectors, top_k)
        if kind != "hnsw":
            raise RuntimeError(f"expected the service's HNSW index, found {kind}")
        sweep[ef] = (times, found)
        log(f"efSearch {ef}: p50 {pct(times, 50):.2f} ms (opened in {opened:.1f} s)")
    log("exact baseline: the same stored vectors in a flat index (built from the SQLite file)")
    flat_policy = IndexPolicy(10**9, HNSWParams(), settings.tombstone_rebuild_fraction)
    kind, flat_ms, exact, opened = in_process_search(folder, flat_policy, query_vectors, top_k)
    if kind != "flat":
        raise RuntimeError(f"expected a flat index, found {kind}")
    shutil.rmtree(workdir, ignore_errors=True)

    def rows_for(values: list[float], label: str, repeat: int = 1) -> None:
        groups = [
            ("all", range(len(queries))),
            *[(k, [i for i, x in enumerate(kinds) if x == k]) for k in ("question", "synthetic")],
        ]
        for group, idx in groups:
            picked = [values[r * len(queries) + i] for r in range(repeat) for i in idx]
            if picked:
                print(
                    f"| {label} | {group} | {len(picked)} | {pct(picked, 50):.2f} | {pct(picked, 95):.2f} | "
                    f"{pct(picked, 99):.2f} | {np.mean(picked):.2f} |"
                )

    default_ef = settings.hnsw_ef_search
    q_idx = [i for i, k in enumerate(kinds) if k == "question"]
    print(f"\nmachine: {describe()}")
    print(
        f"collection: {info['chunks']} synthetic chunks (mean {np.mean([len(t) for t in texts]):.0f} characters), "
        f"index {info['index']} (M {settings.hnsw_m}, efConstruction {settings.hnsw_ef_construction}, efSearch "
        f"{default_ef}), embedder {info['embedder']}"
    )
    print(f"loaded by {how}")
    print(
        f"queries: {kinds.count('question')} evaluation questions + {kinds.count('synthetic')} held-out synthetic "
        f"texts, one at a time, top_k {top_k}, {WARMUP} warm-up searches first; {args.rounds} round(s) per "
        "configuration, each on a freshly started service, configurations alternating"
    )
    for label, (_, _, loads) in http.items():
        print(f"  load average during the HTTP passes, {label}: {'; '.join(loads)}")
    print("\n| measured | queries | n | p50 ms | p95 ms | p99 ms | mean ms |\n|---|---|---|---|---|---|---|")
    for label, (times, _, _) in http.items():
        rows_for(times, f"end to end over HTTP, {label}", args.rounds)
    for backend, times_ms in embed_ms.items():
        rows_for(times_ms, f"in-process: query embedding ({backend})")
    if default_ef in sweep:
        rows_for(sweep[default_ef][0], f"in-process: HNSW search, efSearch {default_ef}")
    rows_for(flat_ms, "in-process: exact flat search (baseline)")

    print(
        "\n| index | efSearch | recall@10 vs exact | recall@10, questions | search p50 ms | search p95 ms | "
        "p95 vs exact flat |\n|---|---|---|---|---|---|---|"
    )
    flat_p95 = pct(flat_ms, 95)
    for ef, (times, found) in sorted(sweep.items()):
        mark = " (default)" if ef == default_ef else ""
        print(
            f"| HNSW, in-process | {ef}{mark} | {recall(found, exact, top_k):.4f} | "
            f"{recall([found[i] for i in q_idx], [exact[i] for i in q_idx], top_k):.4f} | {pct(times, 50):.2f} | "
            f"{pct(times, 95):.2f} | {pct(times, 95) / flat_p95:.2f}x |"
        )
    for label, (_, found, _) in http.items():
        print(
            f"| HNSW, the service over HTTP, {label} | {default_ef} | {recall(found, exact, top_k):.4f} | "
            f"{recall([found[i] for i in q_idx], [exact[i] for i in q_idx], top_k):.4f} | | | |"
        )
    print(f"| exact flat (baseline) | - | 1 | 1 | {pct(flat_ms, 50):.2f} | {flat_p95:.2f} | 1.00x |")

    default_ms, default_found, _ = http["default settings"]
    p95 = pct(default_ms, 95)
    http_recall = recall(default_found, exact, top_k)
    print(
        f"\ntarget p95 <= 20 ms end to end at {info['chunks']} chunks, default settings: {p95:.2f} ms "
        f"({'met' if p95 <= 20 else 'NOT met'})"
    )
    for label, (times, _, _) in http.items():
        if label != "default settings":
            print(
                f"  {label}: p95 {pct(times, 95):.2f} ms ({'met' if pct(times, 95) <= 20 else 'NOT met'}), "
                f"p50 {pct(times, 50):.2f} ms vs {pct(default_ms, 50):.2f} ms"
            )
    print(
        f"target recall@10 of the default HNSW vs exact >= 0.98: {http_recall:.4f} over HTTP "
        f"({'met' if http_recall >= 0.98 else 'NOT met'})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "info": info,
                    "loaded_by": how,
                    "kinds": kinds,
                    "embed_ms": embed_ms,
                    "flat_ms": flat_ms,
                    "http_ms": {label: times for label, (times, _, _) in http.items()},
                    "http_recall": {label: recall(found, exact, top_k) for label, (_, found, _) in http.items()},
                    "sweep_ms": {ef: times for ef, (times, _) in sweep.items()},
                    "sweep_recall": {ef: recall(found, exact, top_k) for ef, (_, found) in sweep.items()},
                },
                indent=2,
            )
        )


# -- ingest -------------------------------------------------------------------------------------------------------


def shuffled_copies(
    articles: list[dict[str, Any]], chunks: int, size: int, overlap: int, seed: int
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Article copies with their paragraphs in a seeded random order, until ``chunks`` chunks; and for each, the
    texts the service will embed for it, in its order."""
    rng = random.Random(seed)
    documents: list[dict[str, Any]] = []
    per_document: list[list[str]] = []
    inputs = 0
    copy = 0
    while inputs < chunks:
        copy += 1
        for article in articles:
            paragraphs = article["text"].split("\n\n")
            rng.shuffle(paragraphs)
            text = "\n\n".join(paragraphs)
            documents.append(
                {
                    "id": f"{article['id']}-v{copy}",
                    "title": article["title"],
                    "text": text,
                    "metadata": article.get("metadata") or {},
                }
            )
            per_document.append([embedding_input(article["title"], c.text) for c in split_text(text, size, overlap)])
            inputs += len(per_document[-1])
            if inputs >= chunks:
                break
    return documents, per_document


def run_ingest(args: argparse.Namespace) -> None:
    articles = load_jsonl(DATA / "articles.jsonl")
    settings = Settings()
    documents, per_document = shuffled_copies(
        articles, args.chunks, settings.chunk_size, settings.chunk_overlap, args.seed
    )
    inputs = [text for texts in per_document for text in texts]
    requests = [
        [text for texts in per_document[i : i + args.batch] for text in texts]
        for i in range(0, len(per_document), args.batch)
    ]
    batch = settings.encode_batch_size
    log(
        f"{len(documents)} documents, {len(inputs)} chunks (mean {np.mean([len(t) for t in inputs]):.0f} "
        "characters embedded per chunk)"
    )
    model = sentence_transformer()
    model.encode(inputs[:batch], batch_size=batch, normalize_embeddings=True)  # warm-up

    def raw_all() -> float:
        started = time.perf_counter()
        model.encode(inputs, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
        return time.perf_counter() - started

    def raw_slices() -> float:
        started = time.perf_counter()
        for i in range(0, len(inputs), batch):
            model.encode(inputs[i : i + batch], batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
        return time.perf_counter() - started

    def raw_requests() -> float:
        started = time.perf_counter()
        for texts in requests:
            model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
        return time.perf_counter() - started

    raw = {"raw_all": raw_all, "raw_slices": raw_slices, "raw_requests": raw_requests}
    results: dict[str, list[tuple[float, str]]] = {"service": [], **{step: [] for step in raw}}
    with retriever(*temporary("bench-retrieval-ingest-")) as service:
        service.create("warmup")
        service.upsert("warmup", documents[:2])
        for round_ in range(args.rounds):
            order = ["service", *raw]
            if round_ % 2:
                order.reverse()
            for step in order:
                before = loadavg()
                if step == "service":
                    name = f"ingest-{round_}"
                    service.create(name)
                    log(f"round {round_ + 1}: ingesting through the service")
                    seconds = ingest_documents(service, name, documents, args.batch)
                    chunks = service.info(name)["chunks"]
                    if chunks != len(inputs):
                        raise RuntimeError(f"the service made {chunks} chunks, the bench expected {len(inputs)}")
                else:
                    log(f"round {round_ + 1}: {step} (service idle)")
                    seconds = raw[step]()
                results[step].append((seconds, f"{before} -> {loadavg()}"))
                log(f"round {round_ + 1}: {step} {len(inputs) / seconds:.1f} chunks/s")

    def rate(step: str) -> float:
        return len(inputs) / sum(s for s, _ in results[step]) * len(results[step])

    print(f"\nmachine: {describe()}")
    print(
        f"{len(inputs)} chunks from {len(documents)} documents ({settings.chunk_size}/{settings.chunk_overlap} "
        f"chunking, {args.batch} documents per request, encode batch size {batch}), {args.rounds} round(s), "
        "order alternating\n"
    )
    labels = {
        "service": "retriever service: POST .../documents over HTTP",
        "raw_all": "baseline: SentenceTransformer.encode(all texts, batch_size=32)",
        "raw_slices": "encode() per 32-text slice in document order (no sorting across slices)",
        "raw_requests": f"encode() once per request of {args.batch} documents (sorted by length within it)",
    }
    print("| path | chunks/s | vs baseline | seconds per round | load average per round |\n|---|---|---|---|---|")
    for step in ("raw_all", "raw_slices", "raw_requests", "service"):
        print(
            f"| {labels[step]} | {rate(step):.1f} | {rate(step) / rate('raw_all'):.2f}x | "
            f"{', '.join(f'{s:.1f}' for s, _ in results[step])} | {'; '.join(x for _, x in results[step])} |"
        )
    ratio = rate("service") / rate("raw_all")
    print(f"\nservice vs encode per 32-text slice in document order: {rate('service') / rate('raw_slices'):.3f}x")
    print(f"target ingest >= 0.9x raw encode: {ratio:.3f}x ({'met' if ratio >= 0.9 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps({k: [s for s, _ in v] for k, v in results.items()}, indent=2))


# -- command line -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    quality = commands.add_parser("quality", help="recall@3, nDCG@10, hit@1, MRR on the IT-support evaluation set")
    quality.add_argument("--top-k", type=int, default=20, help="chunks per search (1-20, default 20)")
    quality.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also rank with sentence-transformers + exact cosine in-process (default on)",
    )
    quality.add_argument("--show-misses", type=int, default=20, help="questions with recall@3 < 1 to list")
    scale = commands.add_parser("scale", help="search latency and HNSW recall at 100k chunks")
    scale.add_argument("--chunks", type=int, default=100_000)
    scale.add_argument("--queries", type=int, default=600, help="searches: the 151 questions, then synthetic texts")
    scale.add_argument(
        "--ef",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[64, 128, 256, 512],
        help="efSearch values of the in-process sweep (comma-separated)",
    )
    scale.add_argument("--batch", type=int, default=1000, help="documents per upsert request when embedding")
    scale.add_argument("--reembed", action="store_true", help="ingest and embed even when vectors are cached")
    scale.add_argument("--rounds", type=int, default=2, help="HTTP passes per configuration (default 2)")
    scale.add_argument(
        "--compare-env",
        default="RETRIEVER_ONNX=false",
        help="also measure the HTTP latency with these variables set (comma-separated K=V; '' to skip)",
    )
    scale.add_argument("--seed", type=int, default=2026)
    ingest = commands.add_parser("ingest", help="ingest chunks/s through the service vs raw encode()")
    ingest.add_argument("--chunks", type=int, default=2000)
    ingest.add_argument("--batch", type=int, default=128, help="documents per upsert request (the CLI's default)")
    ingest.add_argument("--rounds", type=int, default=1)
    ingest.add_argument("--seed", type=int, default=2026)
    for command in (quality, scale, ingest):
        command.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    {"quality": run_quality, "scale": run_scale, "ingest": run_ingest}[args.command](args)


if __name__ == "__main__":
    main()
