"""The profiles file: the shipped demo loads; a bad file fails at start with a message naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.profiles import ProfileFileError, load_profiles
from tests.services import ROOT

DEMO = ROOT / "deploy" / "profiles.yaml"


def test_demo_profiles_load_with_their_knowledge_base() -> None:
    profiles = load_profiles(DEMO)
    cern = profiles.get("cern")
    assert cern is not None and profiles.get("chatqna") is not None
    assert "Lumen Drift" in cern.system_message and cern.system_prompt.strip() in cern.system_message
    assert cern.guardrail() is not None


def test_no_file_means_no_profiles() -> None:
    assert len(load_profiles(None)) == 0


def test_apply_puts_model_system_message_and_defaults() -> None:
    cern = load_profiles(DEMO).get("cern")
    assert cern is not None
    body = cern.apply(
        {"model": "cern", "profile": "cern", "temperature": 0.9, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert body["model"] == "smollm2-135m-instruct" and "profile" not in body
    assert body["temperature"] == 0.9 and body["max_tokens"] == 120
    assert body["messages"][0]["role"] == "system" and body["messages"][1] == {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("profiles: [", "not valid YAML"),
        ("profiles:\n  - id: a\n", "profiles.0.model"),
        ("profiles:\n  - {id: a, model: m, colour: red}\n", "profiles.0.colour"),
        ("profiles:\n  - {id: a, model: m}\n  - {id: a, model: n}\n", "defined twice"),
        ("profiles:\n  - {id: a, model: m, sampling: {warmth: 1}}\n", "unknown sampling"),
        ("profiles:\n  - {id: a, model: m, knowledge_file: missing.md}\n", "cannot be read"),
        ("profiles:\n  - {id: 'a b', model: m}\n", "profiles.0.id"),
        ("- just a list\n", "top level"),
    ],
)
def test_bad_file_names_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    with pytest.raises(ProfileFileError, match=expected.replace(".", r"\.")) as info:
        load_profiles(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileFileError, match="Cannot read"):
        load_profiles(tmp_path / "nope.yaml")


def test_gateway_refuses_to_start_with_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  - id: cern\n")
    env = {**os.environ, "GATEWAY_PROFILES_FILE": str(path), "GATEWAY_PORT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 2
    assert "profiles.0.model" in done.stderr and str(path) in done.stderr
