"""Settings of the inference-hf service, read from ``INFERENCE_HF_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_HF_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8002, ge=1, le=65535, description="Port to listen on.")
    models_config: Path | None = Field(
        None,
        description="YAML file listing the models to serve (see inference-hf/models.example.yaml). Unset: "
        "SmolLM2-135M-Instruct prepared from the bundled GGUF, served in float32 and in NF4 4-bit.",
    )
    models_cache_dir: Path = Field(
        Path("var/hf-models"),
        description="Where GGUF files are converted into Hugging Face model directories (once, at first start).",
    )
    max_loaded_models: int = Field(
        2, ge=1, description="Models loaded at once; loading another unloads the least recently used idle one."
    )
    keep_alive_s: float = Field(
        600.0,
        description="Seconds a model stays loaded after its last request, for models that do not set their "
        "own keep_alive_s; a negative value keeps models loaded until unloaded by hand.",
    )
    idle_check_interval_s: float = Field(
        5.0, gt=0, description="How often idle models are checked against their keep-alive."
    )
    max_batch_size: int = Field(8, ge=1, description="Sequences of one model that decode together in one forward pass.")
    max_queue: int = Field(
        16,
        ge=1,
        description="Requests that may wait per model while its batch is full; beyond that the service "
        "answers 429 with Retry-After.",
    )
    default_max_tokens: int = Field(
        256,
        ge=0,
        description="Answer length in tokens when neither the request (max_tokens) nor the model's "
        "defaults.max_tokens set one; the answer then ends with finish_reason 'length' "
        "(about 20 s of the bundled model in fp32 on 2 CPU cores). "
        "0: until the context is full.",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with a 429.")
    auto_8bit_above_gb: float = Field(
        4.0,
        gt=0,
        description="Models with quantization 'auto' load in 8-bit on CUDA when their weight files are larger "
        "than this many GB (and unquantized otherwise, or on CPU/MPS).",
    )
    num_threads: int | None = Field(
        None, ge=1, description="CPU threads torch uses; unset lets torch pick (the physical cores)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
