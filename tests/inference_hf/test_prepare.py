"""GGUF -> Hugging Face directory: the two traps (save_pretrained refuses a GGUF-loaded model; the
``quantization_config`` left in config.json), atomicity, and doing it only once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from chat_common.bundled import bundled_gguf_path
from inference_hf.prepare import MARKER, WEIGHTS, PrepareError, prepare_gguf

REFERENCE = json.loads(
    (Path(__file__).parents[1] / "inference_gguf" / "data" / "llama_server_reference.json").read_text()
)


def test_prepared_directory_is_a_plain_hf_model(prepared: Path) -> None:
    config = json.loads((prepared / "config.json").read_text())
    assert "quantization_config" not in config  # or every later load would look for a GGUF file
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    with safe_open(str(prepared / WEIGHTS), "pt") as weights:
        names = set(weights.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied: written once
    assert len(names) == 272
    assert (prepared / "tokenizer.json").is_file() and (prepared / "chat_template.jinja").is_file()
    assert oct((prepared / WEIGHTS).stat().st_mode & 0o777) == "0o644"
    assert not [p for p in prepared.parent.iterdir() if p.name.endswith(".partial")]  # nothing half-written


def test_preparing_again_finds_the_directory(prepared: Path, cache_dir: Path) -> None:
    marker = (prepared / MARKER).stat().st_mtime_ns
    calls: list[str] = []
    gguf = bundled_gguf_path()
    assert gguf is not None
    assert prepare_gguf(gguf, cache_dir, progress=lambda stage, done, total: calls.append(stage)) == prepared
    assert calls == [] and (prepared / MARKER).stat().st_mtime_ns == marker


def test_prepare_command_line(prepared: Path, cache_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "inference_hf", "prepare", "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"{prepared}: already prepared" in done.stdout


def test_a_broken_file_leaves_nothing_behind(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(Exception):  # noqa: B017 - the gguf reader's own error; what matters is what is left
        prepare_gguf(bogus, cache)
    assert list(cache.iterdir()) == []
    with pytest.raises(PrepareError, match="does not exist"):
        from inference_hf.prepare import resolve_gguf

        resolve_gguf(tmp_path / "missing.gguf")


def test_the_tokenizer_and_template_survive_the_conversion(prepared: Path) -> None:
    """The prepared tokenizer renders and counts prompts exactly as llama-server does with the GGUF itself."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared))
    for case in REFERENCE["cases"]:
        prompt = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        assert prompt == case["prompt"]
        assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == case["usage"]["prompt_tokens"]
