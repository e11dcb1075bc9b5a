"""deploy/compose.yaml and deploy/compose.gpu.yaml, checked without a Docker engine (none can run here).

Two validators, both offline: docker-compose 1.29 (`config`, the strictest parser a Debian/Ubuntu host ships) and the
compose-spec parser (the Rust compose_spec crate's bindings, the Compose v2 specification). The assertions below
check what the files must do for this project; images are not built here (no engine), so the Dockerfiles are
checked as text."""

from __future__ import annotations

import json
import re
import subprocess
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
GPU = ROOT / "deploy" / "compose.gpu.yaml"
SERVICES = {"gateway", "inference-gguf", "inference-hf", "history", "retriever", "retriever-read", "mongodb", "redis"}
JOBS = {"ingest-demo", "provision-models"}
DOCKERFILES = ["gateway", "history", "inference-gguf", "inference-hf", "retriever"]


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """docker-compose 1.29 writes volumes short: target -> (source, mode)."""
    out = {}
    for volume in service["volumes"]:
        source, target, mode = volume.split(":")
        out[target] = (source, mode)
    return out


def _config(binary: Path, *files: Path, env: dict[str, str] | None = None) -> dict:
    """`docker-compose -f ... config` as a dict: the merged, interpolated file, or the validator's complaint."""
    args = [str(binary)]
    for file in files:
        args += ["-f", str(file)]
    result = subprocess.run(
        [*args, "--profile", "jobs", "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def cpu(docker_compose_1: Path) -> dict:
    return _config(docker_compose_1, COMPOSE)


@pytest.fixture(scope="module")
def gpu(docker_compose_1: Path) -> dict:
    return _config(docker_compose_1, COMPOSE, GPU)


def test_docker_compose_1_29_accepts_both_variants(cpu: dict, gpu: dict) -> None:
    assert set(cpu["services"]) == SERVICES | JOBS
    assert set(gpu["services"]) == SERVICES | JOBS


@pytest.mark.parametrize("variant", ["as-written", "merged-nvidia"])
def test_the_compose_specification_accepts_both_variants(variant: str, request: pytest.FixtureRequest) -> None:
    # The file as written (Compose v2 reads it), then the merged GPU variant as docker-compose resolved it.
    if variant == "as-written":
        data = yaml.safe_load(re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), COMPOSE.read_text()))
    else:
        data = request.getfixturevalue("gpu")
    parsed = PyCompose.from_json(json.dumps(data))
    parsed.validate()
    assert set(parsed.service_names()) == SERVICES | JOBS


def test_a_file_v1_would_reject_is_caught(docker_compose_1: Path, tmp_path: Path) -> None:
    """The validator is not a rubber stamp: Compose v2-only syntax (the issue's rejections) fails it."""
    bad = tmp_path / "compose.yaml"
    bad.write_text(
        "name: x\nservices:\n  a:\n    image: busybox\n    env_file:\n      - path: .env\n        required: false\n"
    )
    result = subprocess.run([str(docker_compose_1), "-f", str(bad), "config"], capture_output=True, text=True)
    assert result.returncode != 0 and "name" in result.stderr


def test_the_cpu_variant_reserves_no_gpu(cpu: dict) -> None:
    for name, service in cpu["services"].items():
        assert "deploy" not in service, f"{name} must start on a host without the NVIDIA toolkit"
    assert cpu["services"]["inference-gguf"]["environment"]["INFERENCE_GGUF_N_GPU_LAYERS"] == "0"


def test_gpu_services_get_the_devices_named_by_a_variable(docker_compose_1: Path, gpu: dict) -> None:
    for name in ("inference-gguf", "inference-hf"):
        devices = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    pinned = _config(docker_compose_1, COMPOSE, GPU, env={"INFERENCE_GGUF_GPUS": "2,3", "INFERENCE_HF_GPUS": "1"})
    reservations = {
        n: pinned["services"][n]["deploy"]["resources"]["reservations"] for n in ("inference-gguf", "inference-hf")
    }
    assert reservations["inference-gguf"]["devices"][0]["device_ids"] == ["2,3"]
    assert reservations["inference-hf"]["devices"][0]["device_ids"] == ["1"]
    for name in SERVICES - {"inference-gguf", "inference-hf"}:
        assert "deploy" not in gpu["services"][name], name


def test_the_gpu_variant_builds_portable_cuda_llama_cpp(gpu: dict) -> None:
    args = gpu["services"]["inference-gguf"]["build"]["args"]
    assert "-DGGML_CUDA=on" in args["CMAKE_ARGS"] and "-DGGML_NATIVE=OFF" in args["CMAKE_ARGS"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=75;80;86;89;90" in args["CMAKE_ARGS"]
    assert args["BUILD_IMAGE"].startswith("nvidia/cuda:") and "devel" in args["BUILD_IMAGE"]
    assert args["RUNTIME_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["RUNTIME_IMAGE"]
    assert gpu["services"]["inference-gguf"]["environment"]["INFERENCE_GGUF_N_GPU_LAYERS"] == "-1"
    hf = gpu["services"]["inference-hf"]["build"]["args"]
    assert hf["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    dockerfile = (ROOT / "inference-gguf" / "Dockerfile").read_text()
    build_arg = re.search(r'^ARG CMAKE_ARGS="([^"]*)"', dockerfile, re.M)
    assert build_arg and "-DGGML_NATIVE=OFF" in build_arg.group(1), "the CPU build must be portable too"


@pytest.mark.parametrize("service", DOCKERFILES)
def test_every_image_runs_as_a_non_root_user(service: str) -> None:
    dockerfile = (ROOT / service / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users, f"{service} runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert dockerfile.index(users[-1]) > dockerfile.rindex("RUN "), "USER must come after the last RUN"
    assert "Expected size" in dockerfile


def test_every_service_builds_from_its_dockerfile_with_a_ready_healthcheck(cpu: dict) -> None:
    for name in SERVICES - {"mongodb", "redis"}:
        service = cpu["services"][name]
        assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).is_file(), name
        assert service["healthcheck"]["test"][0] == "CMD"
        assert "/ready" in " ".join(service["healthcheck"]["test"])


def test_gateway_waits_for_healthy_services_and_reaches_them_by_name(cpu: dict) -> None:
    gateway = cpu["services"]["gateway"]
    assert gateway["depends_on"] == {
        name: {"condition": "service_healthy"}
        for name in ("inference-gguf", "inference-hf", "history", "retriever-read", "redis")
    }
    env = gateway["environment"]
    assert env["GATEWAY_HISTORY_URL"] == "http://history:8004"
    assert env["GATEWAY_RETRIEVER_URL"] == "http://retriever-read:8003"  # searches go to the read replicas
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    services = GatewaySettings(services=json.loads(env["GATEWAY_SERVICES"])).services
    # One URL per service: its name resolves to every container of `--scale`, which the gateway expands.
    assert services == {"inference-gguf": ["http://inference-gguf:8001"], "inference-hf": ["http://inference-hf:8002"]}


def test_redis_is_the_official_image_with_a_volume_and_a_healthcheck(cpu: dict) -> None:
    redis = cpu["services"]["redis"]
    assert redis["image"].startswith("redis:")
    assert _mounts(redis)["/data"] == ("redis-data", "rw")
    assert "ping" in redis["healthcheck"]["test"] and "redis-data" in cpu["volumes"]


def test_history_uses_mongodb_with_a_volume_and_a_healthcheck(cpu: dict) -> None:
    history, mongodb = cpu["services"]["history"], cpu["services"]["mongodb"]
    assert history["depends_on"] == {"mongodb": {"condition": "service_healthy"}}
    assert history["environment"]["HISTORY_MONGODB_URI"] == "mongodb://mongodb:27017/"
    assert mongodb["image"].startswith("mongo:")
    assert _mounts(mongodb)["/data/db"] == ("mongodb-data", "rw")
    assert "ping" in " ".join(mongodb["healthcheck"]["test"])


def test_the_jobs_ingest_the_demo_and_provision_the_models_volume(cpu: dict) -> None:
    ingest, provision = cpu["services"]["ingest-demo"], cpu["services"]["provision-models"]
    for job in (ingest, provision):
        assert job["profiles"] == ["jobs"] and job["restart"] == "no"  # never started by a plain `up`
    assert ingest["command"][:4] == ["python", "-m", "retriever", "ingest"]
    assert ingest["command"][-1] == "http://retriever:8003"
    assert ingest["depends_on"] == {"retriever": {"condition": "service_healthy"}}
    assert (ROOT / "data" / "it-support" / "articles.jsonl").is_file()
    mounts = _mounts(provision)
    assert mounts["/models"] == ("models", "rw") and mounts["/src"] == (str(ROOT / "models"), "ro")
    assert _mounts(cpu["services"]["inference-gguf"])["/models"] == ("models", "ro")
    assert (
        "COPY deploy/scripts/provision_models.py /app/deploy/provision_models.py"
        in (ROOT / "inference-gguf" / "Dockerfile").read_text()
    )


def test_the_retriever_keeps_its_collections_in_a_volume(cpu: dict) -> None:
    service = cpu["services"]["retriever"]
    assert _mounts(service)["/data"] == ("retriever-data", "rw")
    dockerfile = (ROOT / "retriever" / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "download.pytorch.org/whl/cpu" in dockerfile


def _env_names(settings: type) -> set[str]:
    prefix = settings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in settings.model_fields}


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


def test_retriever_read_replicas_share_the_writers_volume_and_can_scale(cpu: dict) -> None:
    writer, reader = cpu["services"]["retriever"], cpu["services"]["retriever-read"]
    assert reader["environment"]["RETRIEVER_READ_ONLY"] == "true"
    assert "RETRIEVER_READ_ONLY" not in writer["environment"]  # the writer: the default, false
    assert reader["environment"]["RETRIEVER_DATA_DIR"] == writer["environment"]["RETRIEVER_DATA_DIR"] == "/data"
    assert _mounts(reader)["/data"] == _mounts(writer)["/data"] == ("retriever-data", "rw")
    assert reader["depends_on"] == {"retriever": {"condition": "service_healthy"}}
    # `--scale retriever-read=N` needs no fixed container name and no published port.
    assert "container_name" not in reader and "ports" not in reader
    assert reader["build"] == writer["build"]
