"""Prometheus metrics of the inference-gguf service, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inference_gguf.engine import Finished

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Implements the engine's observer protocol, plus the counters the HTTP layer updates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "inference_gguf_requests", "Finished generations by finish reason "
            "(stop, length, cancelled, error).", ["model", "finish_reason"], registry=registry)
        self.rejected = Counter(
            "inference_gguf_rejected", "Requests refused before generation, by reason.",
            ["model", "reason"], registry=registry)
        self.prompt_tokens = Counter(
            "inference_gguf_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry)
        self.generation_tokens = Counter(
            "inference_gguf_generation_tokens", "Tokens generated (sampled and accepted).", ["model"],
            registry=registry)
        self.queue = Gauge(
            "inference_gguf_queue_depth", "Requests waiting for the model.", ["model"], registry=registry)
        self.running_sequences = Gauge(
            "inference_gguf_running", "Sequences generating now.", ["model"], registry=registry)
        self.loaded = Gauge(
            "inference_gguf_model_loaded", "1 once the model is loaded.", ["model"], registry=registry)
        self.first_token = Histogram(
            "inference_gguf_time_to_first_token_seconds", "From the start of decoding to the first token "
            "(prompt processing included).", ["model"], registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    # EngineObserver
    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def running(self, model: str, count: int) -> None:
        self.running_sequences.labels(model).set(count)

    def token(self, model: str) -> None:
        self.generation_tokens.labels(model).inc()

    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None:
        self.requests.labels(model, event.finish_reason).inc()
        self.prompt_tokens.labels(model).inc(event.prompt_tokens)
        if first_token_s is not None:
            self.first_token.labels(model).observe(first_token_s)

    def failed(self, model: str) -> None:
        self.requests.labels(model, "error").inc()
