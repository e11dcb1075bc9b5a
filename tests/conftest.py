from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest


def _torch_cuda() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    return f"torch {torch.__version__} sees no CUDA GPU (a CPU-only build, or no GPU)"


def _llama_cpp_offload() -> str | None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return None
    return "llama-cpp-python was built without GPU offload (a CPU build, or no GPU backend)"


_GPU_CHECKS: dict[str, Callable[[], str | None]] = {"torch": _torch_cuda, "llama_cpp": _llama_cpp_offload}


@cache
def _gpu_missing(needs: str) -> str | None:
    """Why the library ``needs`` cannot use a GPU here, or None when it can (asked once per session)."""
    return _GPU_CHECKS[needs]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu("torch")`` / ``@pytest.mark.gpu("llama_cpp")`` tests run only where that library can use
    a GPU: the question goes to the library the test needs, not to the machine (a GPU machine with a CPU-only torch
    or a CPU build of llama-cpp-python skips them too)."""
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        needs = marker.args[0] if marker.args else None
        if needs not in _GPU_CHECKS:
            raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.gpu(NEEDS), NEEDS one of {sorted(_GPU_CHECKS)}")
        reason = _gpu_missing(needs)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
