"""What the integration tests share: the model ids and seed 003's settings the stack is started with, and
reading a service's Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.llama_reference import RECORDED
from tests.services import Service

__all__ = ["FINETUNE_MODEL", "MODEL", "QUESTION", "SEED_003_DEFAULTS", "SEED_003_STOPS", "metric", "wait_until"]

MODEL = "smollm2-135m-instruct"
QUESTION = RECORDED["cases"][0]["messages"][0]["content"]  # "Which city is the capital of France?"
FINETUNE_MODEL = "finetune-chat"  # the bundled model again, with seed 003's sampling defaults
SEED_003_STOPS = [
    "</s>",
    "User:",
    "\nUser:",
    "Human:",
    "\nHuman:",
    "Question:",
    "\nQuestion:",
    "\n\n\n",
    "Example:",
    "Here's an",
    "Let me",
]
SEED_003_DEFAULTS = {
    "repeat_penalty": 1.1,
    "top_k": 40,
    "top_p": 0.9,
    "temperature": 0.5,
    "max_tokens": 150,
    "stop": SEED_003_STOPS,
}


def metric(service: Service, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``, from the service's /metrics."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:g}s"
        time.sleep(0.05)
