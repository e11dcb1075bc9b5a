"""Gateway CPU per streamed answer with a profile's answer filter (reasoning split and guardrail) against
the plain relay of the same answer, in the same run, through the same gateway process.

    .venv/bin/python bench/profile_filter.py [--rounds 5] [--requests 300] [--chunks 64]

Starts ``bench/fake_upstream.py`` (zero latency; a streamed answer of ``--chunks`` chunks, the first
quarter reasoning between <think> tags) and the real gateway with a profiles file holding 'filtered'
(the fake model, <think> tags, four banned phrases, no system prompt, so the request is the same size).
Passes alternate between model 'fake-model' (plain relay) and 'filtered' over several rounds; the
gateway's CPU time (user + system, from /proc) over each pass is divided by the answers it streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from tests.services import free_port, start_service

PROFILES = """
profiles:
  - id: filtered
    model: fake-model
    reasoning: {open: "<think>", close: "</think>"}
    guardrails:
      banned: ["language model", "as an AI", "chatgpt", "openai"]
      fallback: "Let me check."
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_all(url: str, model: str, requests: int, concurrency: int) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": True})
    left = requests
    chunks = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, chunks
        while left > 0:
            left -= 1
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 200, await r.text()
                text = await r.text()
                assert text.endswith("data: [DONE]\n\n"), text[-200:]
                chunks += text.count("data: ")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="streamed answers per pass")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=64, help="content chunks per streamed answer")
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        (logs / "profiles.yaml").write_text(PROFILES)
        up_port, gw_port = free_port(), free_port()
        fake = start_service(
            "fake-upstream",
            [
                "bench/fake_upstream.py",
                "--port",
                str(up_port),
                "--chunks",
                str(args.chunks),
                "--think",
                str(args.chunks // 4),
            ],
            {},
            up_port,
            logs,
            ready_path="/health",
        )
        stack.callback(fake.stop)
        gateway = start_service(
            "gateway",
            ["-m", "gateway"],
            {
                "GATEWAY_PORT": str(gw_port),
                "GATEWAY_SERVICES": json.dumps({"inference-fake": [fake.url]}),
                "GATEWAY_PROFILES_FILE": str(logs / "profiles.yaml"),
                "GATEWAY_LOG_LEVEL": "WARNING",
            },
            gw_port,
            logs,
        )
        stack.callback(gateway.stop)
        url = f"{gateway.url}/v1/chat/completions"
        per_answer: dict[str, list[float]] = {"fake-model": [], "filtered": []}
        asyncio.run(stream_all(url, "filtered", 50, args.concurrency))  # warm-up
        asyncio.run(stream_all(url, "fake-model", 50, args.concurrency))
        for _ in range(args.rounds):
            for model in per_answer:
                before = cpu_seconds(gateway.process.pid)
                asyncio.run(stream_all(url, model, args.requests, args.concurrency))
                per_answer[model].append((cpu_seconds(gateway.process.pid) - before) / args.requests)
        plain = statistics.median(per_answer["fake-model"])
        filtered = statistics.median(per_answer["filtered"])
        print(describe())
        print(
            f"{args.rounds} rounds x {args.requests} streamed answers of {args.chunks} chunks, "
            f"concurrency {args.concurrency}"
        )
        print(
            f"gateway CPU per streamed answer, plain relay : {plain * 1e3:.3f} ms (per round: "
            + ", ".join(f"{v * 1e3:.3f}" for v in per_answer["fake-model"])
            + ")"
        )
        print(
            f"gateway CPU per streamed answer, profile     : {filtered * 1e3:.3f} ms (per round: "
            + ", ".join(f"{v * 1e3:.3f}" for v in per_answer["filtered"])
            + ")"
        )
        print(f"added CPU: {100 * (filtered / plain - 1):+.1f} % (target <= +10 %)")


if __name__ == "__main__":
    main()
