"""The models config: the two default models, the YAML file, and the errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_hf.catalog import (
    DEFAULT_MODEL_ID,
    DEFAULT_NF4_MODEL_ID,
    CatalogError,
    ModelSpec,
    load_catalog,
    local_context_length,
)
from inference_hf.config import Settings


def _settings(tmp_path: Path, text: str | None) -> Settings:
    config = None
    if text is not None:
        config = tmp_path / "models.yaml"
        config.write_text(text)
    return Settings(models_config=config, models_cache_dir=tmp_path / "cache")


def test_default_models_are_smollm2_in_float32_and_nf4(tmp_path: Path) -> None:
    full, nf4 = load_catalog(_settings(tmp_path, None))
    assert (full.id, full.quantization, full.dtype, full.gguf) == (DEFAULT_MODEL_ID, "none", "float32", "bundled")
    assert (nf4.id, nf4.quantization, nf4.bnb_4bit.quant_type) == (DEFAULT_NF4_MODEL_ID, "4bit", "nf4")
    assert nf4.quantization_label() == "4bit-nf4"
    # both come from the same prepared directory
    assert full.location(tmp_path) == nf4.location(tmp_path) == str(tmp_path / "SmolLM2-135M-Instruct.Q4_1")


def test_yaml_entries_with_every_option(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    specs = load_catalog(
        _settings(
            tmp_path,
            """
models:
  - id: local
    source: ./model
    quantization: 8bit
    device: cpu
    max_context: 1024
    keep_alive_s: 30
    chat_template: "{{ messages[0]['content'] }}"
    defaults: {temperature: 0.2, max_tokens: 100, stop: ["\\n\\n"]}
  - id: microsoft/DialoGPT-medium
    source: microsoft/DialoGPT-medium
    preload: false
    bnb_4bit: {quant_type: fp4, double_quant: true, compute_dtype: bfloat16}
    quantization: 4bit
""",
        )
    )
    local, hub = specs
    assert local.source == str((tmp_path / "model").resolve())  # relative to the config file
    assert (local.max_context, local.keep_alive_s, local.defaults.temperature) == (1024, 30, 0.2)
    assert hub.source == "microsoft/DialoGPT-medium" and hub.quantization_label() == "4bit-fp4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [{id: a}]", "exactly one of 'source'"),
        ("models: [{id: a, source: x, gguf: bundled}]", "exactly one of 'source'"),
        ("models: [{id: a, source: x}, {id: a, source: y}]", "configured twice"),
        ("models: [{id: a, source: x, quantization: 3bit}]", "quantization"),
        ("models: [{id: a, gguf: nowhere.gguf}]", "does not exist"),
        ("models: [{id: a, source: x, colour: red}]", "colour"),
        ("models: []", "at least 1"),
        ("models: [", "invalid models config"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(_settings(tmp_path, text))


def test_context_length_read_from_a_local_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"n_positions": 1024}')
    assert local_context_length(str(tmp_path)) == 1024
    assert local_context_length(str(tmp_path / "nowhere")) is None
    assert ModelSpec(id="x", source="y").keep_alive_s is None


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "inference-hf" / "models.example.yaml"
    specs = load_catalog(Settings(models_config=example, models_cache_dir=tmp_path))
    assert [s.id for s in specs] == [DEFAULT_MODEL_ID, DEFAULT_NF4_MODEL_ID]
    assert [s.model_dump() for s in specs] == [s.model_dump() for s in load_catalog(_settings(tmp_path, None))]
