"""Fixtures of the gateway's tests: the real history service on SQLite, started as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Service, free_port, start_service


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("history")
    port = free_port()
    service = start_service(
        "history",
        ["-m", "history"],
        {"HISTORY_PORT": str(port), "HISTORY_SQLITE_PATH": str(logs / "history.sqlite3")},
        port,
        logs,
    )
    yield service
    service.stop()
