"""Real services, started once per test session on free ports: inference-gguf on the bundled model
(served twice: under its own id and as 'finetune-chat' with seed 003's sampling defaults), the history
service on SQLite, the retriever with the IT-support knowledge base ingested by its CLI, and the gateway
in front of them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from chat_common.bundled import bundled_gguf_path
from tests.integration.helpers import FINETUNE_MODEL, MODEL, QUESTION, SEED_003_DEFAULTS
from tests.services import ROOT, Service, free_port, start_service


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def inference(logs: Path) -> Iterator[Service]:
    config = logs / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "id": FINETUNE_MODEL,
                        "path": str(bundled_gguf_path()),
                        "n_ctx": 2048,
                        "defaults": SEED_003_DEFAULTS,
                    }
                ]
            }
        )
    )
    port = free_port()
    service = start_service(
        "inference-gguf",
        ["-m", "inference_gguf"],
        {
            "INFERENCE_GGUF_PORT": str(port),
            "INFERENCE_GGUF_MODELS_DIR": str(logs / "no-models"),
            "INFERENCE_GGUF_MODELS_CONFIG": str(config),
            "INFERENCE_GGUF_MAX_QUEUE": "2",
            "INFERENCE_GGUF_N_SLOTS": "2",
            "INFERENCE_GGUF_N_THREADS": "2",
        },
        port,
        logs,
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def history(logs: Path) -> Iterator[Service]:
    port = free_port()
    service = start_service(
        "history",
        ["-m", "history"],
        {"HISTORY_PORT": str(port), "HISTORY_SQLITE_PATH": str(logs / "history.sqlite3")},
        port,
        logs,
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def retriever(logs: Path) -> Iterator[Service]:
    port = free_port()
    service = start_service(
        "retriever",
        ["-m", "retriever"],
        {"RETRIEVER_PORT": str(port), "RETRIEVER_DATA_DIR": str(logs / "retriever")},
        port,
        logs,
    )
    ingest = subprocess.run(
        [
            sys.executable,
            "-m",
            "retriever",
            "ingest",
            "it-support",
            "data/it-support/articles.jsonl",
            "--url",
            service.url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    yield service
    service.stop()


@pytest.fixture(scope="session")
def greedy_answer(inference: Service) -> str:
    """The bundled model's greedy answer (24 tokens at most) to the first reference question, asked of
    inference-gguf directly: on this machine's CPU kernels (README, quick start)."""
    r = httpx.post(
        f"{inference.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def reasoning_tags(answer: str) -> tuple[str, str]:
    """Tags that make the bundled model (which does not emit ``<think>``) "reason": its answer's first word
    opens, its third word closes, so the text between is reasoning and the rest the answer."""
    words = answer.split()
    return words[0], words[2]


@pytest.fixture(scope="session")
def profiles_file(logs: Path, greedy_answer: str) -> Path:
    """The demo profiles of make run (deploy/profiles.yaml), and 'no-france', whose guardrail bans a
    word the bundled model's greedy answer to "Which city is the capital of France?" holds on every CPU seen
    (the rest of that answer depends on the CPU's kernels: README, quick start); 'thinks', whose reasoning
    tags are words of this machine's greedy answer (:func:`reasoning_tags`)."""
    demo = yaml.safe_load((ROOT / "deploy" / "profiles.yaml").read_text())
    for profile in demo["profiles"]:
        if profile.get("knowledge_file"):
            profile["knowledge_file"] = str((ROOT / "deploy" / profile["knowledge_file"]).resolve())
    demo["profiles"].append(
        {
            "id": "no-france",
            "model": MODEL,
            "sampling": {"temperature": 0, "max_tokens": 24},
            "guardrails": {"banned": ["france"], "fallback": "I cannot talk about that country."},
        }
    )
    open_tag, close_tag = reasoning_tags(greedy_answer)
    demo["profiles"].append(
        {
            "id": "thinks",
            "model": MODEL,
            "sampling": {"temperature": 0, "max_tokens": 24},
            "reasoning": {"open": open_tag, "close": close_tag},
            "guardrails": {"banned": ["switchboard"], "fallback": "No."},  # not in the answer: passed
        }
    )
    path = logs / "profiles.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


@pytest.fixture(scope="session")
def gateway(
    inference: Service, history: Service, retriever: Service, logs: Path, profiles_file: Path
) -> Iterator[Service]:
    port = free_port()
    service = start_service(
        "gateway",
        ["-m", "gateway"],
        {
            "GATEWAY_PORT": str(port),
            "GATEWAY_SERVICES": f'{{"inference-gguf": ["{inference.url}"]}}',
            "GATEWAY_HISTORY_URL": history.url,
            "GATEWAY_RETRIEVER_URL": retriever.url,
            "GATEWAY_FINETUNE_MODEL": FINETUNE_MODEL,
            "GATEWAY_PROFILES_FILE": str(profiles_file),
        },
        port,
        logs,
    )
    yield service
    service.stop()


@pytest.fixture
def client(gateway: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)
