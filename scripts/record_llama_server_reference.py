"""Record llama.cpp's own server's greedy answers, the reference the parity test compares against.

Build llama-server from the llama.cpp that llama-cpp-python vendors (same version as the binding):

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF && cmake --build build --target llama-server -j2
    build/bin/llama-server -m <SmolLM2-135M-Instruct.Q4_1.gguf> --port 8190 -t 2

then: python scripts/record_llama_server_reference.py http://127.0.0.1:8190
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

QUESTIONS = [
    "Which city is the capital of France?",
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 2+2?",
]
OUT = Path(__file__).resolve().parents[1] / "tests" / "inference_gguf" / "data" / "llama_server_reference.json"


def main(url: str) -> None:
    cases = []
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        prompt = httpx.post(f"{url}/apply-template", json={"messages": messages}, timeout=60).json()["prompt"]
        answer = httpx.post(
            f"{url}/v1/chat/completions", timeout=120, json={"messages": messages, "temperature": 0, "max_tokens": 60}
        ).json()
        cases.append(
            {
                "messages": messages,
                "prompt": prompt,
                "content": answer["choices"][0]["message"]["content"],
                "usage": answer["usage"],
            }
        )
    props = httpx.get(f"{url}/props", timeout=10).json()
    OUT.write_text(
        json.dumps(
            {"llama_server_build": props.get("build_info"), "temperature": 0, "max_tokens": 60, "cases": cases},
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8190")
