"""Prometheus metrics of the gateway, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_chat_requests", "Chat requests by model and HTTP status.", ["model", "status"], registry=registry
        )
        self.upstream_failures = Counter(
            "gateway_upstream_failures",
            "Failed calls to services, by reason (connect, timeout, protocol, stream_cut).",
            ["service", "reason"],
            registry=registry,
        )
        self.history_failures = Counter(
            "gateway_history_failures",
            "Failed reads and writes of conversation history (after retries).",
            ["operation"],
            registry=registry,
        )
        self.retrieval_failures = Counter(
            "gateway_retrieval_failures",
            "Searches for passages that failed because the retriever was unavailable.",
            registry=registry,
        )
        self.guardrail_decisions = Counter(
            "gateway_guardrail_decisions",
            "Guarded answers by profile and decision (passed, blocked: replaced with the fallback message).",
            ["profile", "decision"],
            registry=registry,
        )
        self.models = Gauge("gateway_models_routable", "Models with at least one reachable replica.", registry=registry)
