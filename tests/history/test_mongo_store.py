"""MongoDB specifics that need no server: choosing the store, hiding credentials, and a dead server failing fast
with the real driver (motor) against a closed local port. The contract itself runs in test_store_contract.py."""

from __future__ import annotations

import socket
import time

import pytest

from history.config import Settings
from history.store import StoreUnavailable, describe_store
from history.store.mongo import MongoStore, describe_mongodb


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("uri", "hosts"),
    [
        ("mongodb://user:s3cret@db1:27017,db2:27018/app?authSource=admin", "db1:27017,db2:27018"),
        ("mongodb+srv://user:s3cret@cluster0.example.net/?retryWrites=true", "cluster0.example.net"),
        ("mongodb://localhost", "localhost"),
    ],
)
def test_descriptions_name_the_hosts_and_never_the_credentials(uri: str, hosts: str) -> None:
    assert describe_mongodb(uri, "x") == f"MongoDB at {hosts}, database 'x'"


def test_mongodb_is_chosen_when_a_uri_is_set_under_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HISTORY_MONGODB_URI", raising=False)
    monkeypatch.delenv("MONGODB_URI", raising=False)
    assert describe_store(Settings()).startswith("SQLite file ")
    monkeypatch.setenv("MONGODB_URI", "mongodb://u:pw@seed-host:27017")
    settings = Settings()
    assert describe_store(settings) == "MongoDB at seed-host:27017, database 'switchboard'"
    assert "pw" not in repr(settings)
    monkeypatch.setenv("HISTORY_MONGODB_URI", "mongodb://own-host")
    monkeypatch.setenv("HISTORY_MONGODB_DATABASE", "chat")
    assert describe_store(Settings()) == "MongoDB at own-host, database 'chat'"
    monkeypatch.setenv("HISTORY_MONGODB_URI", "")  # blank counts as unset...
    monkeypatch.setenv("MONGODB_URI", "")
    assert describe_store(Settings()).startswith("SQLite file ")


async def test_an_unreachable_server_fails_within_the_timeout_without_credentials() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await MongoStore.open(f"mongodb://admin:hunter2@127.0.0.1:{closed_port()}/", "switchboard", timeout_s=0.3)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert "MongoDB at 127.0.0.1:" in message and "HISTORY_MONGODB_URI" in message
    assert "hunter2" not in message and "admin" not in message
