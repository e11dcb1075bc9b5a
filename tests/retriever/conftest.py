"""Factories for the retriever tests: real FAISS, real SQLite files under ``tmp_path`` and the real embedder
(all-MiniLM-L6-v2 from its wheel), loaded once per session.

Embedding is the slow part on two CPU cores, so the knowledge-base collection most tests search is embedded once
per session (``kb_dir``) and each test gets its own copy of that data folder (``kb_copy``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from retriever.app import create_app
from retriever.config import BUNDLED_EMBEDDER, Settings
from retriever.embedder import Embedder, bundled_model_path
from retriever.schemas import CollectionSettings, DocumentIn
from retriever.serving import RetrieverService

ROOT = Path(__file__).resolve().parents[2]
ARTICLES = ROOT / "data" / "it-support" / "articles.jsonl"

# A few articles from several categories: three password ones, two VPN ones that share the tag 'NWL Connect',
# two for staff only (printers, wifi), one MFA.
KB_SUBSET = ("kb-0001", "kb-0002", "kb-0003", "kb-0007", "kb-0008", "kb-0012", "kb-0025", "kb-0031", "kb-0050")

ServiceFactory = Callable[..., Awaitable[RetrieverService]]
Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    model = Embedder(BUNDLED_EMBEDDER, bundled_model_path())
    model.load()
    return model


@pytest.fixture(scope="session")
def articles() -> dict[str, DocumentIn]:
    with ARTICLES.open(encoding="utf-8") as lines:
        docs = [DocumentIn.model_validate(json.loads(line)) for line in lines if line.strip()]
    return {doc.id: doc for doc in docs}


@pytest.fixture(scope="session")
def kb_docs(articles: dict[str, DocumentIn]) -> list[DocumentIn]:
    return [articles[doc_id] for doc_id in KB_SUBSET]


def service_for(data_dir: Path, embedder: Embedder, **settings: Any) -> RetrieverService:
    service = RetrieverService(Settings(data_dir=data_dir, **settings), embedders={embedder.id: embedder})
    service.load()
    return service


@pytest.fixture(scope="session")
def kb_dir(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, kb_docs: list[DocumentIn]) -> Path:
    """A data folder holding collection 'kb' (the KB_SUBSET articles, default chunking), built once."""
    folder = tmp_path_factory.mktemp("kb-data")

    async def build() -> None:
        service = service_for(folder, embedder)
        await service.put_collection("kb", CollectionSettings())
        await service.upsert("kb", kb_docs)
        await service.close()

    asyncio.run(build())
    return folder


@pytest.fixture
def kb_copy(tmp_path: Path, kb_dir: Path) -> Path:
    """This test's own copy of the session's 'kb' data folder."""
    target = tmp_path / "kb-data"
    shutil.copytree(kb_dir, target)
    return target


@pytest.fixture
async def make_service(tmp_path: Path, embedder: Embedder) -> AsyncIterator[ServiceFactory]:
    """Returns a factory: ``await make_service(data_dir=None, **settings)`` builds and loads a service (data under
    ``tmp_path/data`` by default) sharing the session's embedder; every service it made is closed at the end."""
    made: list[RetrieverService] = []

    async def factory(data_dir: Path | None = None, **settings: Any) -> RetrieverService:
        service = await asyncio.to_thread(service_for, data_dir or tmp_path / "data", embedder, **settings)
        made.append(service)
        return service

    yield factory
    for service in made:
        await service.close()


@pytest.fixture
def client(tmp_path: Path, embedder: Embedder) -> Client:
    """Returns a factory: ``async with client(**settings) as http`` runs the app, lifespan included, until it
    is loaded, with its data under ``tmp_path/data`` unless ``data_dir`` says otherwise."""

    @asynccontextmanager
    async def running(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings.setdefault("data_dir", tmp_path / "data")
        app: FastAPI = create_app(Settings(**settings), embedders={embedder.id: embedder})
        async with app.router.lifespan_context(app):
            await app.state.loader
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://retriever") as http:
                yield http

    return running


def error(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, after checking the envelope's shape."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]
