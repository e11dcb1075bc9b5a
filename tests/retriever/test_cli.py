"""``python -m retriever ingest`` and ``import-seed`` against a real retriever started as a subprocess on a free
port (``python -m retriever``), as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from retriever.embedder import Embedder
from tests.retriever.test_seed_import import SEED_CONFIG, seed_files
from tests.services import ROOT, Service, free_port, start_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("retriever-service")
    port = free_port()
    service = start_service(
        "retriever",
        ["-m", "retriever"],
        {"RETRIEVER_PORT": str(port), "RETRIEVER_DATA_DIR": str(logs / "data")},
        port,
        logs,
    )
    yield service
    service.stop()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retriever", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_ingest_shows_progress_and_documents_become_searchable(retriever: Service, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(
        docs / "guides" / "badge.md",
        "# Lost badge\n\nReport a lost badge at reception; a temporary one is issued the same day.\n",
    )
    write(docs / "guides" / "coffee.md", "# Coffee machine\n\nDescale it every Friday with the blue bottle.\n")
    write(docs / "parking.txt", "Visitor parking is on level -2. Ask reception for a ticket.\n")
    write(
        docs / "faq.jsonl",
        "\n".join(
            json.dumps(d)
            for d in [
                {
                    "id": "faq-1",
                    "title": "Printer",
                    "text": "Printer jams: open tray 2.",
                    "metadata": {"area": "print"},
                },
                {"id": "faq-2", "text": "The canteen opens at 11:30.", "metadata": {"area": "food"}},
            ]
        )
        + "\n",
    )
    write(docs / "more.csv", "id,title,text,area\ncsv-1,Wi-Fi,Guest Wi-Fi password is at reception.,network\n")

    first = cli("ingest", "docs", str(docs), "--url", retriever.url, "--batch", "2")
    assert first.returncode == 0, first.stderr
    assert "created collection 'docs'" in first.stderr
    assert "ingest docs: 100%" in first.stderr and "6/6" in first.stderr  # tqdm's bar, on stderr
    assert first.stdout.strip() == (
        "ingested 6 documents from 5 file(s) into 'docs': 6 added or changed, 0 unchanged, 6 chunks embedded"
    )

    hits = httpx.post(
        f"{retriever.url}/v1/collections/docs/search", json={"query": "I lost my badge", "top_k": 1}
    ).json()["data"]
    assert (hits[0]["doc_id"], hits[0]["title"], hits[0]["source"]) == ("guides/badge", "Lost badge", "guides/badge.md")
    csv_hit = httpx.post(
        f"{retriever.url}/v1/collections/docs/search",
        json={"query": "guest wifi", "top_k": 1, "filter": {"area": "network"}},
    ).json()["data"]
    assert csv_hit[0]["doc_id"] == "csv-1"

    again = cli("ingest", "docs", str(docs), "--url", retriever.url)
    assert again.returncode == 0, again.stderr
    assert "0 added or changed, 6 unchanged, 0 chunks embedded" in again.stdout


def test_errors_say_what_to_do_next(retriever: Service, tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "Some text.\n")
    missing = cli("ingest", "nowhere", str(tmp_path / "a.txt"), "--url", retriever.url, "--no-create")
    assert missing.returncode == 2
    assert "The collection 'nowhere' does not exist." in missing.stderr and "--no-create" in missing.stderr
    assert httpx.get(f"{retriever.url}/v1/collections/nowhere").status_code == 404

    down = cli("ingest", "docs", str(tmp_path / "a.txt"), "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3
    assert "start it with `make run` or `python -m retriever`" in down.stderr

    write(tmp_path / "bad.jsonl", '{"id": "x", "txt": "typo"}\n')
    bad = cli("ingest", "docs", str(tmp_path / "bad.jsonl"), "--url", retriever.url)
    assert bad.returncode == 2 and f"{tmp_path / 'bad.jsonl'}:1: unknown field(s) txt" in bad.stderr

    nothing = cli("ingest", "docs", str(tmp_path / "none"), "--url", retriever.url)
    assert nothing.returncode == 2 and "no such file or folder" in nothing.stderr


def test_import_seed_command(retriever: Service, embedder: Embedder, tmp_path: Path) -> None:
    index, metadata, config = seed_files(tmp_path, embedder, SEED_CONFIG)
    done = cli(
        "import-seed",
        "it-support",
        "--index",
        str(index),
        "--metadata",
        str(metadata),
        "--config",
        str(config),
        "--url",
        retriever.url,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "imported 4 records into 'it-support': 4 added or changed, 0 unchanged, 4 chunks; reused the seed's vectors"
    )
    hits = httpx.post(f"{retriever.url}/v1/collections/it-support/search", json={"query": "VPN", "top_k": 1}).json()[
        "data"
    ]
    assert hits[0]["doc_id"] == "seed-00001"
