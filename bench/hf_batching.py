"""Batched decoding in inference-hf: 8 concurrent requests against the same 8 sent one after another.

    .venv/bin/python bench/hf_batching.py [--rounds 2] [--max-tokens 64] [--concurrency 8]

Starts the real service (``python -m inference_hf``, default models: SmolLM2-135M-Instruct prepared from
the bundled GGUF, float32 and NF4 4-bit) as a subprocess and, for each model, sends the same N chat
requests (greedy, ``ignore_eos`` so every answer is exactly ``--max-tokens`` long) twice per round:
one after another, then all at once. The two passes alternate their order from round to round so that
drift on a shared machine hits both. Aggregate throughput = completion tokens / wall time of the pass.
Prints tokens/s for each, the concurrent/sequential ratio (target: >= 3x for the float32 model), the
mean number of sequences per decode pass the service itself counted, and the memory footprint of the
NF4 model against the float32 one (``memory_bytes`` from /v1/models: weights and buffers).

On a machine shared with other work the figures move with its load (torch's threads wait for each
other at every matmul, so any other busy process slows a step down), so the 1-minute load average
before and after the run is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from tests.services import free_port, start_service

FULL = "smollm2-135m-instruct-hf"
NF4 = "smollm2-135m-instruct-hf-nf4"
PROMPTS = [
    "Tell me a story about a lighthouse keeper.",
    "Explain how rain forms.",
    "Write a short poem about the sea.",
    "What should I pack for a hiking trip?",
    "Describe your favourite city.",
    "How do bees make honey?",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "What makes a good friend?",
    "Summarise the plot of a detective novel you like.",
    "How does a bicycle stay upright?",
    "Describe a day at the beach.",
    "What is the best way to learn a language?",
    "Explain what a volcano is.",
    "Write a limerick about a cat.",
    "Plan a picnic for four people.",
]


async def _one(session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    async with session.post(url, json=body) as response:
        payload = await response.json()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload}")
    return int(payload["usage"]["completion_tokens"])


async def _pass(base: str, model: str, prompts: list[str], max_tokens: int, concurrent: bool) -> tuple[int, float]:
    url = f"{base}/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        if concurrent:
            counts = await asyncio.gather(*(_one(session, url, model, p, max_tokens) for p in prompts))
        else:
            counts = [await _one(session, url, model, p, max_tokens) for p in prompts]
        return sum(counts), time.perf_counter() - started


async def _decode_rows(base: str, model: str) -> tuple[float, float]:
    """(decode passes, rows decoded) so far, from the service's own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    passes = rows = 0.0
    for line in text.splitlines():
        if line.startswith(f'inference_hf_decode_batch_rows_count{{model="{model}"}}'):
            passes = float(line.split()[-1])
        elif line.startswith(f'inference_hf_decode_batch_rows_sum{{model="{model}"}}'):
            rows = float(line.split()[-1])
    return passes, rows


async def _cards(base: str) -> dict[str, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/v1/models") as response:
        return {card["id"]: card for card in (await response.json())["data"]}


def measure(base: str, model: str, *, rounds: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    asyncio.run(_pass(base, model, prompts[:2], 4, True))  # warm-up
    totals = {"sequential": [0, 0.0], "concurrent": [0, 0.0]}
    mean_rows = 0.0
    for round_ in range(rounds):
        order = [False, True] if round_ % 2 == 0 else [True, False]
        for concurrent in order:
            before = asyncio.run(_decode_rows(base, model))
            tokens, elapsed = asyncio.run(_pass(base, model, prompts, max_tokens, concurrent))
            name = "concurrent" if concurrent else "sequential"
            after = asyncio.run(_decode_rows(base, model))
            totals[name][0] += tokens
            totals[name][1] += elapsed
            if concurrent:
                mean_rows = (after[1] - before[1]) / max(1.0, after[0] - before[0])
            print(
                f"  round {round_ + 1}: {name:10} {tokens} tokens in {elapsed:.2f}s = {tokens / elapsed:.1f} tok/s",
                file=sys.stderr,
            )
    seq = totals["sequential"][0] / totals["sequential"][1]
    conc = totals["concurrent"][0] / totals["concurrent"][1]
    return {"sequential_tok_s": seq, "concurrent_tok_s": conc, "ratio": conc / seq, "mean_rows_per_decode": mean_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-nf4", action="store_true", help="measure the float32 model only")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("var/hf-models"),
        help="prepared models (INFERENCE_HF_MODELS_CACHE_DIR); prepared on first use",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    port = free_port()
    service = start_service(
        "inference-hf",
        ["-m", "inference_hf"],
        {
            "INFERENCE_HF_PORT": str(port),
            "INFERENCE_HF_MODELS_CACHE_DIR": str(args.cache_dir),
            "INFERENCE_HF_MAX_BATCH_SIZE": str(args.concurrency),
            "INFERENCE_HF_KEEP_ALIVE_S": "-1",
            "INFERENCE_HF_LOG_LEVEL": "WARNING",
        },
        port,
        logs,
        timeout_s=600,
    )
    results: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]
    try:
        cards = asyncio.run(_cards(service.url))
        for model in [FULL] if args.skip_nf4 else [FULL, NF4]:
            print(f"{model}:", file=sys.stderr)
            results[model] = measure(
                service.url, model, rounds=args.rounds, concurrency=args.concurrency, max_tokens=args.max_tokens
            )
    finally:
        service.stop()
    load_after = os.getloadavg()[0]

    full_mem = cards[FULL]["state"]["memory_bytes"]
    nf4_mem = cards[NF4]["state"]["memory_bytes"]
    print(f"\nmachine: {describe()}")
    print(
        f"{args.rounds} rounds; {args.concurrency} requests per pass, {args.max_tokens} tokens each "
        f"(greedy, ignore_eos); 1-minute load average {load_before:.2f} before, {load_after:.2f} after\n"
    )
    print("| model | sequential tok/s | concurrent tok/s | ratio | mean sequences per decode pass |")
    print("|---|---|---|---|---|")
    for model, r in results.items():
        print(
            f"| {model} | {r['sequential_tok_s']:.1f} | {r['concurrent_tok_s']:.1f} | {r['ratio']:.2f}x | "
            f"{r['mean_rows_per_decode']:.2f} |"
        )
    print(
        f"\nmemory footprint: float32 {full_mem / 2**20:.0f} MiB, NF4 {nf4_mem / 2**20:.0f} MiB "
        f"({nf4_mem / full_mem:.2f}x, {full_mem / nf4_mem:.1f}x smaller)"
    )
    ratio = results[FULL]["ratio"]
    print(
        f"target: {args.concurrency} concurrent >= 3x sequential for {FULL}: {ratio:.2f}x "
        f"({'met' if ratio >= 3 else 'NOT met'})"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "memory_bytes": {FULL: full_mem, NF4: nf4_mem}}, indent=2))


if __name__ == "__main__":
    main()
