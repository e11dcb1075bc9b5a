"""Command line: ``python -m retriever ingest`` and ``python -m retriever import-seed``, clients of a running
retriever (``python -m retriever`` alone serves).

::

    python -m retriever ingest COLLECTION PATH... [--url URL] [--batch 128] [--create | --no-create]
    python -m retriever import-seed COLLECTION --index X.bin --metadata X.pkl --config X.json [--url URL]
                                   [--create | --no-create]

Both read their files here and send them to the service's HTTP API, so they work against a retriever on another
machine or in a container. A missing collection is created with the service's defaults (``--create``, the
default, and the command says so); ``--no-create`` makes a missing collection an error instead, for scripts that
want a misspelt name caught. Every file is read and checked before anything is sent. The URL defaults to
``RETRIEVER_URL``, else ``http://127.0.0.1:$RETRIEVER_PORT`` (8003).

Exit status: 0 done, 1 the service refused a batch (those before it are stored; run again once fixed: unchanged
documents are skipped), 2 bad arguments or files, 3 the service is not reachable or not ready.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
from tqdm import tqdm

from retriever.loaders import SUFFIXES, LoadError, read_documents

__all__ = ["main"]

READY_WAIT_S = 180.0


class _Failure(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _default_url() -> str:
    return os.environ.get("RETRIEVER_URL") or f"http://127.0.0.1:{os.environ.get('RETRIEVER_PORT') or 8003}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retriever",
        description="Switchboard retriever. Without a command it serves (settings from RETRIEVER_* variables).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the service (the default)")

    ingest = commands.add_parser(
        "ingest",
        help="send documents from files to a running retriever",
        description="Read documents from files and folders ("
        + ", ".join(SUFFIXES)
        + ") and upsert them into COLLECTION of a running retriever.",
    )
    ingest.add_argument("collection")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder (walked)")
    ingest.add_argument("--batch", type=int, default=128, help="documents per request (default 128)")

    seed = commands.add_parser(
        "import-seed",
        help="import the IT-support system's FAISS index, pickle and config",
        description="Upload the seed's three files to COLLECTION of a running retriever; "
        "its vectors are reused when they come from the collection's embedder.",
    )
    seed.add_argument("collection")
    seed.add_argument("--index", type=Path, required=True, help="the FAISS index (it_support_faiss_index.bin)")
    seed.add_argument("--metadata", type=Path, required=True, help="the pickle (it_support_metadata.pkl)")
    seed.add_argument("--config", type=Path, required=True, help="the config (it_support_config.json)")

    for command in (ingest, seed):
        command.add_argument(
            "--url",
            default=_default_url(),
            help="the retriever's base URL (default: RETRIEVER_URL or http://127.0.0.1:8003)",
        )
        command.add_argument(
            "--create",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="create the collection with the service's defaults if it does not exist "
            "(default); --no-create makes that an error",
        )
    return parser


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"


def _wait_ready(client: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    said = False
    while True:
        try:
            response = client.get("/ready")
        except httpx.TransportError as exc:
            raise _Failure(
                f"cannot reach the retriever at {url} ({type(exc).__name__}): start it with `make run` "
                "or `python -m retriever`, or point --url at it",
                3,
            ) from None
        if response.status_code == 200:
            return
        body_code = None
        try:
            body_code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            pass
        if body_code != "loading" or time.monotonic() > deadline:
            raise _Failure(f"the retriever at {url} is not ready: {_message(response)}", 3)
        if not said:
            print(f"waiting for the retriever at {url} to finish loading...", file=sys.stderr)
            said = True
        time.sleep(1)


def _ensure_collection(client: httpx.Client, name: str, create: bool) -> None:
    response = client.get(f"/v1/collections/{name}")
    if response.status_code == 200:
        return
    if response.status_code != 404:
        raise _Failure(f"cannot look up collection '{name}': {_message(response)}", 1)
    if not create:
        raise _Failure(f"{_message(response)} Leave out --no-create to create it with the service's defaults.", 2)
    response = client.put(f"/v1/collections/{name}")
    if response.status_code not in (200, 201):
        raise _Failure(f"cannot create collection '{name}': {_message(response)}", 2)
    info = response.json()
    print(
        f"created collection '{name}' (embedder {info['embedder']}, chunk_size {info['chunk_size']}, "
        f"chunk_overlap {info['chunk_overlap']}, index {info['index_mode']})",
        file=sys.stderr,
    )


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=httpx.Timeout(600.0, connect=5.0))


def _ingest(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise _Failure("--batch must be at least 1", 2)
    try:
        loaded = read_documents(args.paths)
    except LoadError as exc:
        raise _Failure(str(exc), 2) from None
    for path in loaded.skipped_files:
        print(f"skipped {path}: not one of {', '.join(SUFFIXES)}", file=sys.stderr)
    for name in loaded.blank:
        print(f"skipped {name}: no text", file=sys.stderr)
    documents = loaded.documents
    if not documents:
        raise _Failure(
            f"no documents found in {', '.join(map(str, args.paths))} (looked for {', '.join(SUFFIXES)} files)", 2
        )
    totals = {"upserted": 0, "unchanged": 0, "chunks": 0}
    with _client(args.url) as client:
        _wait_ready(client, args.url)
        _ensure_collection(client, args.collection, args.create)
        with tqdm(
            total=len(documents), unit="doc", desc=f"ingest {args.collection}", file=sys.stderr, dynamic_ncols=True
        ) as progress:
            for start in range(0, len(documents), args.batch):
                batch = documents[start : start + args.batch]
                body = {"documents": [doc.model_dump(exclude_none=True) for doc in batch]}
                try:
                    response = client.post(f"/v1/collections/{args.collection}/documents", json=body)
                except httpx.TransportError as exc:
                    raise _Failure(
                        f"lost the retriever at {args.url} ({type(exc).__name__}) after {start} "
                        "documents; those are stored. Run the same command again once it is back: "
                        "unchanged documents are skipped.",
                        3,
                    ) from None
                if response.status_code != 200:
                    raise _Failure(
                        f"the retriever refused documents {batch[0].id!r}..{batch[-1].id!r}: "
                        f"{_message(response)} The {start} documents before them are stored; fix the "
                        "input and run again (unchanged documents are skipped).",
                        1,
                    )
                result = response.json()
                for key in totals:
                    totals[key] += result[key]
                progress.set_postfix(chunks=totals["chunks"], unchanged=totals["unchanged"], refresh=False)
                progress.update(len(batch))
    print(
        f"ingested {len(documents)} documents from {loaded.files} file(s) into '{args.collection}': "
        f"{totals['upserted']} added or changed, {totals['unchanged']} unchanged, {totals['chunks']} chunks "
        "embedded"
    )
    return 0


def _import_seed(args: argparse.Namespace) -> int:
    files: dict[str, Any] = {}
    for field in ("index", "metadata", "config"):
        path: Path = getattr(args, field)
        if not path.is_file():
            raise _Failure(f"--{field} {path}: no such file", 2)
        files[field] = (path.name, path.read_bytes(), "application/octet-stream")
    with _client(args.url) as client:
        _wait_ready(client, args.url)
        _ensure_collection(client, args.collection, args.create)
        print(f"importing {args.metadata.name} into '{args.collection}'...", file=sys.stderr)
        response = client.post(f"/v1/collections/{args.collection}/import", files=files)
    if response.status_code != 200:
        raise _Failure(f"the retriever refused the import: {_message(response)}", 1)
    result = response.json()
    print(
        f"imported {result['documents']} records into '{args.collection}': {result['upserted']} added or "
        f"changed, {result['unchanged']} unchanged, {result['chunks']} chunks; {result['note']}"
    )
    return 0


def _fail(message: str, status: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str]) -> int:
    """Run a client command (``ingest`` or ``import-seed``); returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "import-seed":
            return _import_seed(args)
    except _Failure as failure:
        _fail(str(failure), failure.status)
    _parser().print_help()
    return 2


def wants_client(argv: Sequence[str]) -> bool:
    """Whether the command line names a client command (else: serve)."""
    return bool(argv) and argv[0] not in ("serve",)
