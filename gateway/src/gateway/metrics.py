"""Prometheus metrics of the gateway, on the app's own registry.

The ``model`` label only ever holds a model the gateway routes (one its services list) or ``other``
(:data:`OTHER_MODEL`): a client can send any model name, and a label taken from it would let any client
create unbounded series. Latency and time to first token are histograms per model; tokens are counted
from the ``usage`` the model services report (every non-streamed answer; a streamed one when the client
asked for it with ``stream_options.include_usage``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OTHER_MODEL", "GatewayMetrics"]

OTHER_MODEL = "other"
# seconds: a cached or tiny answer (milliseconds) to a long generation (minutes)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_chat_requests",
            "Chat requests by model (a routed model, or 'other') and HTTP status.",
            ["model", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_chat_request_duration_seconds",
            "Chat requests from arrival to the end of the answer (the last byte of a stream), by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "gateway_chat_time_to_first_token_seconds",
            "Streamed answers: from the request reaching the gateway's upstream call to the first event with "
            "text, by model.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens",
            "Prompt tokens of answered chat requests (from usage), by model.",
            ["model"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "gateway_completion_tokens",
            "Completion tokens of answered chat requests (from usage), by model.",
            ["model"],
            registry=registry,
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
        self.affinity_results = Counter(
            "gateway_affinity",
            "Answers to requests with a session, by model and result: hit (the session's own replica answered) "
            "or fallback (it was down, out for a cool-down, saturated, or answered 429: another one did).",
            ["model", "result"],
            registry=registry,
        )
        self.profile_filters = Counter(
            "gateway_profile_filters",
            "Profile answers with a reasoning split or guardrail, by who applied the filter (service: pushed "
            "down to the model service; gateway: filtered here).",
            ["by"],
            registry=registry,
        )
        self.models = Gauge("gateway_models_routable", "Models with at least one reachable replica.", registry=registry)

        # Labelled children, looked up once per label set (``labels()`` costs a lock and several calls).
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def chat_request(self, model_label: str, status: int, duration_s: float) -> None:
        """Count a chat request with its status and observe its duration."""
        self._child(self.requests, model_label, str(status)).inc()
        self._child(self.latency, model_label).observe(duration_s)

    def first_token(self, model_label: str, seconds: float) -> None:
        self._child(self.time_to_first_token, model_label).observe(seconds)

    def usage(self, model_label: str, usage: Any) -> None:
        """Count the tokens of an answer's ``usage`` object (ignored when it is not one)."""
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt > 0:
            self._child(self.prompt_tokens, model_label).inc(prompt)
        if isinstance(completion, int) and completion > 0:
            self._child(self.completion_tokens, model_label).inc(completion)

    def affinity(self, model_label: str, result: str) -> None:
        self._child(self.affinity_results, model_label, result).inc()
