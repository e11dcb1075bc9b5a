"""deploy/compose.yaml, checked without a Docker engine (none can run on these machines).

The compose-spec parser (the Rust compose_spec crate's bindings) validates the file against the
Compose specification; the assertions below check what the file must do for this project."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

from gateway.config import Settings as GatewaySettings
from history.config import Settings as HistorySettings
from inference_gguf.config import Settings as GGUFSettings
from inference_hf.config import Settings as HFSettings
from retriever.config import Settings as RetrieverSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_names(settings: type) -> set[str]:
    prefix = settings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


def _interpolated(text: str) -> str:
    """What `docker compose` does before validating: ${VAR:-default} takes its default here."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)


def test_compose_file_follows_the_specification() -> None:
    # YAML merge keys (<<) are resolved by the YAML loader, as docker compose does, before validation.
    parsed = PyCompose.from_json(json.dumps(yaml.safe_load(_interpolated(COMPOSE.read_text()))))
    parsed.validate()
    assert set(parsed.service_names()) == {
        "gateway",
        "inference-gguf",
        "inference-hf",
        "history",
        "retriever",
        "mongodb",
    }


def test_every_service_builds_from_its_own_dockerfile(compose: dict) -> None:
    for name, service in compose["services"].items():
        if name == "mongodb":
            continue  # the official image
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert (context / service["build"]["dockerfile"]).is_file(), name
        assert service["healthcheck"]["test"][0] == "CMD"
        assert "/ready" in " ".join(service["healthcheck"]["test"])


def test_gateway_waits_for_healthy_services(compose: dict) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["depends_on"] == {
        "inference-gguf": {"condition": "service_healthy"},
        "inference-hf": {"condition": "service_healthy"},
        "history": {"condition": "service_healthy"},
        "retriever": {"condition": "service_healthy"},
    }
    assert gateway["environment"]["GATEWAY_HISTORY_URL"] == "http://history:8004"
    assert gateway["environment"]["GATEWAY_RETRIEVER_URL"] == "http://retriever:8003"
    assert "inference-gguf:8001" in gateway["environment"]["GATEWAY_SERVICES"]
    GatewaySettings(services=yaml.safe_load(gateway["environment"]["GATEWAY_SERVICES"]))  # valid value


def test_inference_hf_gets_the_gpu_a_cuda_image_and_a_model_cache(compose: dict) -> None:
    service = compose["services"]["inference-hf"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "hf-cache:/var/lib/inference-hf" in service["volumes"] and "hf-cache" in compose["volumes"]
    dockerfile = (ROOT / "inference-hf" / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda:" in dockerfile
    assert "download.pytorch.org/whl/cu" in dockerfile and "bundled-model" in dockerfile


def test_inference_gets_the_gpu_and_the_models_volume(compose: dict) -> None:
    service = compose["services"]["inference-gguf"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "models:/models:ro" in service["volumes"] and "models" in compose["volumes"]
    assert service["environment"]["INFERENCE_GGUF_MODELS_DIR"] == "/models"


def test_the_retriever_keeps_its_collections_in_a_volume(compose: dict) -> None:
    service = compose["services"]["retriever"]
    assert "retriever-data:/data" in service["volumes"] and "retriever-data" in compose["volumes"]
    assert service["environment"]["RETRIEVER_DATA_DIR"] == "/data"
    dockerfile = (ROOT / "retriever" / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "download.pytorch.org/whl/cpu" in dockerfile
    assert "VOLUME /data" in dockerfile


def test_the_gguf_image_compiles_llama_cpp_with_cuda() -> None:
    dockerfile = (ROOT / "inference-gguf" / "Dockerfile").read_text()
    assert "-DGGML_CUDA=on" in dockerfile and "llama-cpp-python==0.3.36" in dockerfile
    assert "INFERENCE_GGUF_N_GPU_LAYERS=-1" in dockerfile


@pytest.mark.parametrize("settings", [GatewaySettings, GGUFSettings, HFSettings, HistorySettings, RetrieverSettings])
def test_every_setting_is_documented(settings: type) -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in _env_names(settings):
        assert re.search(rf"\b{name}=", example), f"{name} missing from .env.example"
        assert f"`{name}`" in readme, f"{name} missing from README.md"


def test_env_example_names_only_real_settings() -> None:
    known = (
        _env_names(GatewaySettings)
        | _env_names(GGUFSettings)
        | _env_names(HistorySettings)
        | _env_names(RetrieverSettings)
        | _env_names(HFSettings)
        | {"GATEWAY_PUBLISH_PORT"}
    )
    named = set(re.findall(r"^# ([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert named <= known, named - known


def test_history_uses_mongodb_with_a_volume_and_a_healthcheck(compose: dict) -> None:
    history, mongodb = compose["services"]["history"], compose["services"]["mongodb"]
    assert history["depends_on"] == {"mongodb": {"condition": "service_healthy"}}
    assert _interpolated(history["environment"]["HISTORY_MONGODB_URI"]) == "mongodb://mongodb:27017/"
    assert mongodb["image"].startswith("mongo:")
    assert any(v.endswith(":/data/db") for v in mongodb["volumes"])
    assert "ping" in " ".join(mongodb["healthcheck"]["test"])
