"""Prometheus metrics of the inference-hf service, on the app's own registry: the series every inference
service keeps, plus batching and model management."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chat_common.engine_serving import GenerationMetrics

__all__ = ["ServiceMetrics"]


class ServiceMetrics(GenerationMetrics):
    """Implements the engine's and the model manager's observer protocols, plus the HTTP layer's counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "inference_hf")
        self.forward_passes = Counter(
            "inference_hf_forward_passes",
            "Forward passes by kind (prefill, decode).",
            ["model", "kind"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "inference_hf_decode_batch_rows",
            "Sequences decoded together in one forward pass.",
            ["model"],
            registry=registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
        )
        self.memory = Gauge(
            "inference_hf_model_memory_bytes",
            "Memory footprint of the loaded model's weights and buffers.",
            ["model"],
            registry=registry,
        )
        self.loads = Counter("inference_hf_model_loads", "Model loads.", ["model"], registry=registry)
        self.unloads = Counter(
            "inference_hf_model_unloads",
            "Model unloads by reason (request, keep_alive, evicted).",
            ["model", "reason"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "inference_hf_model_load_seconds",
            "Time to load a model.",
            ["model"],
            registry=registry,
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )

    # EngineObserver, beyond GenerationMetrics
    def forward(self, model: str, kind: str, rows: int) -> None:
        self.forward_passes.labels(model, kind).inc()
        if kind == "decode":
            self.batch_rows.labels(model).observe(rows)

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
