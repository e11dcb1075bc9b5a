"""inference-gguf's Prometheus series: the ones every inference service keeps
(:class:`chat_common.engine_serving.GenerationMetrics`) plus continuous batching and prompt-cache reuse."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chat_common.engine_serving import GenerationMetrics

__all__ = ["GgufMetrics"]

_PREFIX = "inference_gguf"


class GgufMetrics(GenerationMetrics):
    """Implements the engine's observer calls (made on its worker thread; prometheus_client is thread-safe)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, _PREFIX)
        self.slots = Gauge(
            f"{_PREFIX}_slots", "Slots (sequences decoded together) per model.", ["model"], registry=registry
        )
        self.slots_busy = Gauge(f"{_PREFIX}_slots_busy", "Slots serving a sequence now.", ["model"], registry=registry)
        self.batch_sequences = Histogram(
            f"{_PREFIX}_batch_sequences",
            "Sequences in each decoding step's batch (generating ones plus prompts being evaluated).",
            ["model"],
            registry=registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
        )
        self.batch_tokens = Histogram(
            f"{_PREFIX}_batch_tokens",
            "Tokens in each decoding step's batch.",
            ["model"],
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        )
        self.decode_seconds = Counter(
            f"{_PREFIX}_decode_seconds", "Time spent inside llama_decode.", ["model"], registry=registry
        )
        self.step_seconds = Counter(
            f"{_PREFIX}_step_seconds",
            "Time spent in decoding steps: llama_decode plus building the batch and sampling (the difference "
            "is the engine's own per-step overhead).",
            ["model"],
            registry=registry,
        )
        self.prompt_reused = Counter(
            f"{_PREFIX}_prompt_tokens_reused",
            "Prompt tokens found in a slot's KV cache (not evaluated again).",
            ["model"],
            registry=registry,
        )
        self.prompt_evaluated = Counter(
            f"{_PREFIX}_prompt_tokens_evaluated", "Prompt tokens evaluated.", ["model"], registry=registry
        )

    def running(self, model: str, count: int) -> None:
        super().running(model, count)
        self.slots_busy.labels(model).set(count)

    def step(self, model: str, sequences: int, tokens: int, decode_s: float, step_s: float) -> None:
        self.batch_sequences.labels(model).observe(sequences)
        self.batch_tokens.labels(model).observe(tokens)
        self.decode_seconds.labels(model).inc(decode_s)
        self.step_seconds.labels(model).inc(step_s)

    def prompt(self, model: str, reused: int, evaluated: int) -> None:
        if reused:
            self.prompt_reused.labels(model).inc(reused)
        self.prompt_evaluated.labels(model).inc(evaluated)
