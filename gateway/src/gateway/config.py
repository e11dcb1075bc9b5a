"""Settings of the gateway, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FinetuneSampling", "RateLimit", "Settings", "is_loopback"]

# The FineTuneLLM backend's stop sequences (seed 003's README).
FINETUNE_STOPS = (
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
)


class FinetuneSampling(BaseModel):
    """The sampling the FineTuneLLM route sends with every request: that backend's own settings (seed
    003: at most 150 tokens, its stop sequences, temperature 0.5, top_k 40, top_p 0.9, repeat penalty
    1.1). A field set to null is left to the model's own defaults."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(150, ge=1)
    temperature: float | None = Field(0.5, ge=0.0, le=2.0)
    top_p: float | None = Field(0.9, gt=0.0, le=1.0)
    top_k: int | None = Field(40, ge=0)
    repeat_penalty: float | None = Field(1.1, gt=0.0, le=10.0)
    stop: list[str] | None = Field(default_factory=lambda: list(FINETUNE_STOPS), max_length=16)
    seed: int | None = None  # not the seed's: set one for reproducible answers


class RateLimit(BaseModel):
    """Requests and tokens a minute; a missing (null) one is not limited."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="Requests a minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt and completion) a minute.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-For and X-Forwarded-Proto the gateway believes: comma-separated "
        "addresses or networks (10.0.0.0/8), '*' for any. The client address they give is what per-address "
        "rate limits (GATEWAY_RATE_LIMIT_ANONYMOUS) count and the access log shows. Behind a load balancer or "
        "an ingress, list its addresses; never '*' where clients can reach the gateway directly (they could "
        "then pick their own address).",
    )
    services: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "inference-gguf": ["http://127.0.0.1:8001"],
            "inference-hf": ["http://127.0.0.1:8002"],
        },
        description="Model services as JSON: service name -> list of replica base URLs. The gateway asks "
        "each replica's /v1/models which models it serves.",
    )
    refresh_interval_s: float = Field(
        10.0, gt=0, description="Seconds between two reads of every replica's /v1/models."
    )
    dns_nameservers: list[str] = Field(
        default_factory=list,
        description='DNS servers ("ip" or "ip:port", JSON list) that resolve service host names into replicas; '
        "empty: the system resolver (Docker's and Kubernetes' DNS). A name with several addresses (compose "
        "--scale, a headless Service) is one replica per address, re-resolved on every refresh.",
    )
    breaker_threshold: int = Field(
        3,
        ge=1,
        description="Consecutive failures (timeouts, 5xx answers, refused connections, streams cut short) after "
        "which a replica is taken out of routing for GATEWAY_BREAKER_COOLDOWN_S.",
    )
    breaker_cooldown_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a failing replica stays out; then one request probes it (success puts it back).",
    )
    affinity_max_in_flight: int = Field(
        4,
        ge=0,
        description="A session's requests go to one replica (its prompt cache holds the conversation) unless "
        "that replica is saturated: this gateway already has this many requests in flight there (match the "
        "replica's slots, INFERENCE_GGUF_N_SLOTS; 4 for the bundled model), or it answers 429 (its queue is "
        "full). Then the least busy replica answers. 0: only a 429 counts as saturated.",
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="Connect timeout to a service, in seconds.")
    read_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Longest wait for a service's next bytes (the first token, or the next chunk of a "
        "stream), in seconds; past it the request fails with 503.",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted; larger is 413.")
    max_upstream_connections: int = Field(
        512, ge=1, description="Connections the gateway keeps open to all services together."
    )
    history_url: str | None = Field(
        "http://127.0.0.1:8004",
        description="Base URL of the history service, which stores conversations for requests that carry a "
        "session id. Empty: sessions are off and a session id is refused with 400.",
    )
    history_turns: int = Field(
        10,
        ge=0,
        le=500,
        description="Exchanges (a user message and its answer) of a session put before a new request, newest "
        "kept; fewer when they would not fit the model's context.",
    )
    history_on_error: Literal["fail", "answer"] = Field(
        "fail",
        description="When the history service cannot be read: 'fail' answers 503 (nothing is generated that "
        "could not be stored), 'answer' answers without history and says so in the "
        "X-Switchboard-History: unavailable response header.",
    )
    retriever_url: str | None = Field(
        "http://127.0.0.1:8003",
        description="Base URL of the retriever service, which finds passages for requests that ask for "
        "retrieval. Empty: retrieval is off and a request asking for it is refused with 400.",
    )
    retriever_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the retriever's search results, in seconds; past it the "
        "request fails with 503 (or is answered without passages when it says so).",
    )
    rag_instruction: str = Field(
        "Answer the user's question using the numbered passages below. Cite the passages you use as [1], "
        "[2]. If the passages do not contain the answer, say that you do not know.",
        min_length=1,
        description="The instruction put before the numbered passages in the system message of a request "
        "with retrieval.",
    )
    rag_model: str = Field(
        "smollm2-135m-instruct",
        description="Model behind the IT-support chatbot's POST /api/v1/chat/ route (seed 002).",
    )
    rag_collection: str = Field(
        "it-support",
        description="Retriever collection behind the IT-support chatbot's POST /api/v1/chat/ route.",
    )
    finetune_model: str = Field(
        "smollm2-135m-instruct",
        description="Model behind the FineTuneLLM-compatible POST /chat route (seed 003); a model whose "
        "sampling defaults are that backend's, e.g. 'finetune-chat' from deploy/models.example.yaml.",
    )
    profiles_file: Path | None = Field(
        None,
        description="YAML file of profiles (personas: model, system prompt, knowledge file, sampling, "
        "reasoning tags, guardrails); see deploy/profiles.yaml. Empty: no profiles. A bad file stops the "
        "gateway at start.",
    )
    cern_profile: str = Field(
        "cern", min_length=1, description="Profile behind the Cern-compatible POST /api/chat route (seed 000)."
    )
    chatqna_model: str = Field(
        "chatqna",
        min_length=1,
        description="Profile id, or else model id, behind the ChatQnA-compatible POST /v1/chatqna route (seed 001).",
    )
    finetune_sampling: FinetuneSampling = Field(
        default_factory=FinetuneSampling,
        description="Sampling sent with every POST /chat request, as JSON (fields max_tokens, temperature, "
        "top_p, top_k, repeat_penalty, stop, seed; missing ones keep the seed's values (no seed), null ones "
        "are left to the model's defaults).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis (or Valkey) URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS, unix:///path for "
        "a socket): the gateway's shared state (API keys, rate limits, response cache). Empty: no Redis, "
        "so no API keys (GATEWAY_AUTH must then be off, the default on a loopback bind).",
    )
    redis_prefix: str = Field(
        "switchboard:",
        min_length=1,
        description="Prefix of every Redis key the gateway writes, so several deployments can share one Redis.",
    )
    redis_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Connect and reply timeout of every Redis call, in seconds; past it a request that needs "
        "Redis (an API key check) answers 503.",
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="API keys: 'on' every route but /health, /ready, /metrics and the docs needs a key "
        "(Authorization: Bearer sk-... or x-api-key), 'off' none does, 'auto' is off on a loopback "
        "GATEWAY_HOST (127.0.0.1, ::1, localhost) without GATEWAY_API_KEYS_FILE, on otherwise. On needs "
        "GATEWAY_REDIS_URL.",
    )
    auth_cache_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="Seconds a verified key is kept in each gateway process before Redis is asked again: a "
        "revoked key is refused within this time. 0: every request asks Redis.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="YAML file of API keys (name, sha256 or secret, models, rpm, tpm, expires) put into Redis "
        "at every start, for simple setups; see gateway/src/gateway/keys_file.py. Setting it turns "
        "GATEWAY_AUTH=auto on. A bad file stops the gateway at start.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the gateway (CORS), as a JSON list, e.g. "
        '["https://chat.example.com"]; ["*"] allows any. Empty: CORS is off (no CORS headers, no preflight).',
    )
    cors_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "DELETE"],
        description="HTTP methods a browser may use cross-origin (JSON list), when GATEWAY_CORS_ORIGINS is set.",
    )
    cors_headers: list[str] = Field(
        default_factory=lambda: [
            "Authorization",
            "Content-Type",
            "X-API-Key",
            "X-Request-ID",
            "X-Session-ID",
            "X-Switchboard-Profile",
            "X-Switchboard-Cache",
        ],
        description="Request headers a browser may send cross-origin (JSON list), when GATEWAY_CORS_ORIGINS is set.",
    )
    rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict,
        description='Default rate limits per model, as JSON: model id (or "*" for any model) -> {"rpm": requests '
        'a minute, "tpm": tokens a minute}, e.g. {"*": {"rpm": 60, "tpm": 40000}}. They apply per API key and '
        "model (and per client address and model when GATEWAY_RATE_LIMIT_ANONYMOUS is set), beside a key's own "
        "limits. Counted in Redis, shared by every gateway replica.",
    )
    rate_limit_anonymous: RateLimit | None = Field(
        None,
        description="Limits of requests without an API key (authentication off), per client address, as JSON "
        '{"rpm", "tpm"}; the model defaults then apply per address too. Empty: such requests are not limited.',
    )
    rate_limit_lease_s: float = Field(
        0.1,
        ge=0,
        le=5,
        description="Seconds of a large limit's rate a busy replica takes ahead from Redis and admits from "
        "itself, without a Redis call per request (gateway/leases.py): a limit of L a minute, L * this / 60 "
        "units. Leases never let more through than the limit; a replica may hold up to that many units another "
        "could have used, until they are used or their slots pass. A subject is leased only when each of its limits is "
        "worth at least 4 requests; 0: every limited request asks Redis.",
    )
    redis_failure: Literal["open", "closed"] = Field(
        "open",
        description="When Redis cannot be reached for rate limits: 'open' answers anyway (a warning in the log, "
        "X-Switchboard-Ratelimit: unavailable on the answer), 'closed' answers 503.",
    )
    cache_ttl_s: float = Field(
        3600.0, gt=0, description="Seconds a cached answer is kept (opt-in response cache, see the README)."
    )
    cache_max_entry_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest answer the response cache stores, in bytes (a stream's relayed bytes); larger ones "
        "are answered and not cached. Redis's maxmemory policy bounds the cache as a whole.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need an API key: ``auth``, with 'auto' resolved from the bind address."""
        if self.auth == "auto":
            return not is_loopback(self.host) or self.api_keys_file is not None
        return self.auth == "on"

    @model_validator(mode="after")
    def _auth_needs_redis(self) -> Settings:
        if self.auth_enabled and self.redis_url is None:
            why = "GATEWAY_AUTH=on" if self.auth == "on" else f"GATEWAY_AUTH=auto (bind {self.host}, keys file)"
            raise ValueError(
                f"{why} needs API keys, which live in Redis, but GATEWAY_REDIS_URL is empty. Set "
                "GATEWAY_REDIS_URL (e.g. redis://127.0.0.1:6379/0), or bind 127.0.0.1, or set GATEWAY_AUTH=off "
                "to serve without keys (anyone who can reach the port can then use every model)."
            )
        return self

    @model_validator(mode="after")
    def _limits_need_redis(self) -> Settings:
        if (self.rate_limits or self.rate_limit_anonymous is not None) and self.redis_url is None:
            raise ValueError(
                "GATEWAY_RATE_LIMITS / GATEWAY_RATE_LIMIT_ANONYMOUS are counted in Redis, but GATEWAY_REDIS_URL is "
                "empty. Set GATEWAY_REDIS_URL (e.g. redis://127.0.0.1:6379/0), or leave the limits empty."
            )
        return self

    @field_validator("services")
    @classmethod
    def _urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if not value:
            raise ValueError("at least one service is needed")
        for name, urls in value.items():
            if not urls:
                raise ValueError(f"service '{name}' has no replica URL")
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"service '{name}': '{url}' is not an http(s) URL")
        return {name: [u.rstrip("/") for u in urls] for name, urls in value.items()}

    @field_validator("profiles_file", "api_keys_file", mode="before")
    @classmethod
    def _optional_path(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"'{origin}' is not an origin (scheme://host[:port], or *)")
        return [origin.rstrip("/") for origin in value]

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"'{value}' is not a redis://, rediss:// or unix:// URL")
        return value.strip()

    @field_validator("history_url", "retriever_url")
    @classmethod
    def _service_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"'{value}' is not an http(s) URL")
        return value.rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
