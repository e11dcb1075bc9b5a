"""Command line: ``python -m inference_hf prepare [--gguf FILE] [--cache-dir DIR]`` converts the GGUF files the
configured models need (the bundled SmolLM2 by default) into Hugging Face model directories, with a progress bar,
and exits. The service does the same on its own when it loads a model; this is for doing it ahead of time (an image
build, a slow disk).

Exit status: 0 done (or already prepared), 2 a GGUF or the models config cannot be used (the message says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from chat_common.settings import settings_or_exit
from inference_hf.catalog import CatalogError, gguf_sources, load_catalog
from inference_hf.config import Settings
from inference_hf.prepare import PrepareError, is_prepared, prepare_gguf, prepared_dir, resolve_gguf

__all__ = ["main"]


class _Bar:
    """A tqdm bar per stage, for the command line."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = self._tqdm(total=total, desc=stage, unit="step" if total == 1 else "tensor", file=sys.stderr)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def main(argv: list[str] | None = None) -> int:
    """``python -m inference_hf prepare``: make the HF directories the configured models need."""
    parser = argparse.ArgumentParser(
        prog="python -m inference_hf prepare",
        description="Convert GGUF files into Hugging Face model directories (once; later runs find them). "
        "Without --gguf: every GGUF the configured models need (the bundled SmolLM2 by default).",
    )
    parser.add_argument("--gguf", help="a GGUF file to convert, or 'bundled'")
    parser.add_argument("--cache-dir", type=Path, help="where to put it (default INFERENCE_HF_MODELS_CACHE_DIR)")
    args = parser.parse_args(argv)
    settings = settings_or_exit(Settings)
    cache_dir = args.cache_dir or settings.models_cache_dir
    try:
        sources = [resolve_gguf(args.gguf)] if args.gguf else gguf_sources(load_catalog(settings))
        for gguf in sources:
            dest = prepared_dir(gguf, cache_dir)
            if is_prepared(dest):
                print(f"{dest}: already prepared")
                continue
            print(f"preparing {gguf.name} -> {dest}", file=sys.stderr)
            bar = _Bar()
            try:
                prepare_gguf(gguf, cache_dir, progress=bar)
            finally:
                bar.close()
            print(f"{dest}: prepared")
    except (PrepareError, CatalogError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
