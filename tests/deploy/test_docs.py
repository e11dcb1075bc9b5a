"""The deployment docs name the commands users run, and those commands name files and services that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _deployment_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Deployment\n") : readme.index("## Development\n")]


def test_the_readme_shows_compose_cpu_gpu_scale_and_kubernetes() -> None:
    section = _deployment_section()
    for command in (
        "docker compose -f deploy/compose.yaml up --build -d",
        "docker compose -f deploy/compose.yaml -f deploy/compose.gpu.yaml up --build -d",
        "--scale inference-gguf=3",
        "kubectl apply -k deploy/k8s/overlays/cpu",
        "kubectl apply -k deploy/k8s/overlays/gpu",
    ):
        assert command in section, command


def test_the_commands_name_files_and_services_that_exist() -> None:
    section = _deployment_section()
    for path in set(re.findall(r"(?:deploy|gateway|history|retriever|inference-gguf|inference-hf)/[\w./-]+", section)):
        assert (ROOT / path.rstrip(".")).exists(), path
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    for service in re.findall(r"(?:run --rm|--scale) ([\w-]+)", section):
        assert service.split("=")[0] in compose, service
    overlays = {p.name for p in (ROOT / "deploy" / "k8s" / "overlays").iterdir()}
    assert set(re.findall(r"deploy/k8s/overlays/(\w+)", section)) <= overlays
    assert (ROOT / "deploy" / "README.md").is_file()
