from __future__ import annotations

from pathlib import Path

import pytest

from chat_common.bundled import bundled_gguf_path
from inference_gguf.catalog import BUNDLED_MODEL_ID, CatalogError, discover_models
from inference_gguf.config import Settings


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(models_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_bundled_model_is_found_in_its_wheel(tmp_path: Path) -> None:
    path = bundled_gguf_path()
    assert path is not None and path.is_file() and path.suffix == ".gguf"
    specs = discover_models(_settings(tmp_path))
    assert [s.id for s in specs] == [BUNDLED_MODEL_ID]


def test_folder_scan_uses_file_stems_and_first_split_part(tmp_path: Path) -> None:
    for name in ("chat.gguf", "big-00001-of-00002.gguf", "big-00002-of-00002.gguf", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    ids = [s.id for s in discover_models(_settings(tmp_path, bundled_model=False))]
    assert ids == ["big", "chat"]


def test_config_sets_defaults_and_renames(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"")
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  - id: finetune-chat\n    path: model.gguf\n    n_ctx: 2048\n"
        "    defaults: {temperature: 0.5, top_k: 40, max_tokens: 150, stop: ['User:']}\n"
        f"  - id: {BUNDLED_MODEL_ID}\n    defaults: {{repeat_penalty: 1.1}}\n"
    )
    specs = {s.id: s for s in discover_models(_settings(tmp_path, models_config=config))}
    assert set(specs) == {BUNDLED_MODEL_ID, "finetune-chat"}  # "model" is served once, renamed
    assert specs["finetune-chat"].n_ctx == 2048
    assert specs["finetune-chat"].defaults.stop == ["User:"]
    assert specs[BUNDLED_MODEL_ID].defaults.repeat_penalty == 1.1


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("models:\n  - id: ghost\n", "no path"),
        ("models:\n  - id: x\n    path: missing.gguf\n", "does not exist"),
        ("models:\n  - id: x\n    colour: red\n", "invalid models config"),
        ("models: [\n", "invalid models config"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(yaml_text)
    with pytest.raises(CatalogError, match=fragment):
        discover_models(_settings(tmp_path, models_config=config))


def test_nothing_to_serve_explains_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="INFERENCE_GGUF_MODELS_DIR"):
        discover_models(_settings(tmp_path / "empty", bundled_model=False))
