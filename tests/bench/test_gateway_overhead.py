"""The gateway-overhead benchmark's harness: its bare proxy relays exactly what the upstream sends, and a
tiny run of the benchmark produces every figure it reports. No timing is asserted (see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.services import ROOT, free_port, start_service

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_the_bare_proxy_relays_the_upstream_answers_byte_for_byte(tmp_path: Path) -> None:
    up, port = free_port(), free_port()
    fake = start_service(
        "fake-upstream", ["bench/fake_upstream.py", "--port", str(up), "--chunks", "5"], {}, up, tmp_path
    )
    bare = start_service(
        "bare-proxy", ["bench/bare_proxy.py", "--port", str(port), "--upstream", fake.url], {}, port, tmp_path
    )
    try:
        for stream in (False, True):
            direct, relayed = (
                httpx.post(f"{base}/v1/chat/completions", json={**BODY, "stream": stream})
                for base in (fake.url, bare.url)
            )
            assert relayed.status_code == direct.status_code == 200
            assert relayed.headers["content-type"] == direct.headers["content-type"]
            assert relayed.content == direct.content
        assert direct.content.count(b"data: ") == 5 + 3  # role chunk, 5 tokens, finish chunk, [DONE]
    finally:
        bare.stop()
        fake.stop()


def test_a_short_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/gateway_overhead.py",
            "--rounds",
            "1",
            "--requests",
            "20",
            "--requests-concurrent",
            "64",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["concurrency"], r["stream"]) for r in rows] == [(1, False), (1, True), (32, False), (32, True)]
    for row in rows:
        for path in ("direct", "bare", "gateway"):
            assert row[path]["requests"] == (20 if row["concurrency"] == 1 else 64)
            assert row[path]["rps"] > 0
        assert row["rps_ratio"] == row["gateway"]["rps"] / row["direct"]["rps"]
    assert "target streaming throughput at concurrency 32 >= 0.5x direct" in run.stdout
    assert "gateway garbage-collection passes" in run.stdout
