"""deploy/scripts/provision_models.py, the provision-models job, on real files and a real local HTTP server."""

from __future__ import annotations

import http.server
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "scripts" / "provision_models.py"


@pytest.fixture(scope="module")
def provision() -> ModuleType:
    spec = importlib.util.spec_from_file_location("provision_models", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "remote.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 40)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_copies_local_gguf_files_and_downloads_urls(provision: ModuleType, tmp_path: Path, served: str) -> None:
    source, target = tmp_path / "src", tmp_path / "models"
    source.mkdir()
    (source / "a.gguf").write_bytes(b"GGUF-a" * 1000)
    (source / "notes.txt").write_text("not a model")
    assert provision.main(["--source", str(source), "--target", str(target), "--url", f"{served}/remote.gguf"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["a.gguf", "remote.gguf"]
    assert (target / "a.gguf").read_bytes() == (source / "a.gguf").read_bytes()
    assert (target / "remote.gguf").read_bytes() == (tmp_path / "www" / "remote.gguf").read_bytes()

    # A second run keeps what is there (same size) and writes nothing new.
    before = (target / "a.gguf").stat().st_mtime_ns
    done, failed = provision.provision(target, source, [f"{served}/remote.gguf"])
    assert failed == [] and all(line.startswith("kept") for line in done)
    assert (target / "a.gguf").stat().st_mtime_ns == before


def test_a_missing_download_fails_and_leaves_no_partial_file(
    provision: ModuleType, tmp_path: Path, served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "models"
    assert provision.main(["--target", str(target), "--url", f"{served}/absent.gguf", "--url", "ftp://x/y"]) == 1
    assert list(target.iterdir()) == []
    err = capsys.readouterr().err
    assert "absent.gguf: HTTP Error 404" in err and "not an http(s) URL" in err
