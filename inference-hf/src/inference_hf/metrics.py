"""Prometheus metrics of the inference-hf service, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inference_hf.engine import Finished

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Implements the engine's and the model manager's observer protocols, plus the HTTP layer's counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "inference_hf_requests", "Finished generations by finish reason (stop, length, cancelled, error).",
            ["model", "finish_reason"], registry=registry)
        self.rejected = Counter(
            "inference_hf_rejected", "Requests refused before generation, by reason.", ["model", "reason"],
            registry=registry)
        self.prompt_tokens = Counter(
            "inference_hf_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry)
        self.generation_tokens = Counter(
            "inference_hf_generation_tokens", "Tokens generated.", ["model"], registry=registry)
        self.queue = Gauge(
            "inference_hf_queue_depth", "Requests waiting to join the model's batch.", ["model"], registry=registry)
        self.running_sequences = Gauge(
            "inference_hf_running", "Sequences in the model's batches now.", ["model"], registry=registry)
        self.forward_passes = Counter(
            "inference_hf_forward_passes", "Forward passes by kind (prefill, decode).", ["model", "kind"],
            registry=registry)
        self.batch_rows = Histogram(
            "inference_hf_decode_batch_rows", "Sequences decoded together in one forward pass.", ["model"],
            registry=registry, buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
        self.loaded = Gauge(
            "inference_hf_model_loaded", "1 while the model is loaded.", ["model"], registry=registry)
        self.memory = Gauge(
            "inference_hf_model_memory_bytes", "Memory footprint of the loaded model's weights and buffers.",
            ["model"], registry=registry)
        self.loads = Counter(
            "inference_hf_model_loads", "Model loads.", ["model"], registry=registry)
        self.unloads = Counter(
            "inference_hf_model_unloads", "Model unloads by reason (request, keep_alive, evicted).",
            ["model", "reason"], registry=registry)
        self.load_seconds = Histogram(
            "inference_hf_model_load_seconds", "Time to load a model.", ["model"], registry=registry,
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.first_token = Histogram(
            "inference_hf_time_to_first_token_seconds", "From joining a batch to the first token (prefill "
            "included).", ["model"], registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    # EngineObserver
    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def running(self, model: str, count: int) -> None:
        self.running_sequences.labels(model).set(count)

    def forward(self, model: str, kind: str, rows: int) -> None:
        self.forward_passes.labels(model, kind).inc()
        if kind == "decode":
            self.batch_rows.labels(model).observe(rows)

    def tokens(self, model: str, count: int) -> None:
        if count:
            self.generation_tokens.labels(model).inc(count)

    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None:
        self.requests.labels(model, event.finish_reason).inc()
        self.prompt_tokens.labels(model).inc(event.prompt_tokens)
        if first_token_s is not None:
            self.first_token.labels(model).observe(first_token_s)

    def failed(self, model: str) -> None:
        self.requests.labels(model, "error").inc()

    # ManagerObserver
    def model_loaded(self, model: str, memory_bytes: int, load_s: float) -> None:
        self.loaded.labels(model).set(1)
        self.memory.labels(model).set(memory_bytes)
        self.loads.labels(model).inc()
        self.load_seconds.labels(model).observe(load_s)

    def model_unloaded(self, model: str, reason: str) -> None:
        self.loaded.labels(model).set(0)
        self.memory.labels(model).set(0)
        self.unloads.labels(model, reason).inc()
