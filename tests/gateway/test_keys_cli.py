"""``python -m gateway keys`` as an operator runs it (a subprocess against the session's real Redis), the
keys file (``GATEWAY_API_KEYS_FILE``) seeded at start, and the expiry syntax."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.api_keys import KeyStore, digest, parse_expiry
from gateway.keys_file import KeysFileError, load_keys_file
from tests.gateway.fakes import chat, gateway, model_replica, running
from tests.services import ROOT


def _keys(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def test_create_use_list_revoke_round_trip(redis_url: str, redis_prefix: str) -> None:
    created = _keys(redis_url, redis_prefix, "create", "frontend", "--models", "m1, cern", "--rpm", "60",
                    "--expires", "30d")  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk-") and len(secret) > 40 and "\n" not in secret  # the secret alone on stdout
    assert "shown this once" in created.stderr

    redis = Redis.from_url(redis_url)
    key = await KeyStore(redis, redis_prefix).lookup(secret)
    await redis.aclose()
    assert key is not None and key.name == "frontend" and key.models == ("m1", "cern") and key.rpm == 60
    assert key.expires_at is not None and abs(key.expires_at - (time.time() + 30 * 86400)) < 120

    replica = model_replica()
    settings = {"auth": "on", "redis_url": redis_url, "redis_prefix": redis_prefix, "auth_cache_s": 0}
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **settings) as client:
        used = await client.post("/v1/chat/completions", content=chat(), headers={"Authorization": f"Bearer {secret}"})
        listed = _keys(redis_url, redis_prefix, "list")
        revoked = _keys(redis_url, redis_prefix, "revoke", "frontend")
        refused = await client.post("/v1/chat/completions", content=chat(), headers={"x-api-key": secret})
    assert used.status_code == 200
    assert listed.returncode == 0 and key.id in listed.stdout and "models=m1,cern" in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    assert revoked.returncode == 0, revoked.stderr
    assert refused.status_code == 401
    assert _keys(redis_url, redis_prefix, "list").stdout == ""
    assert _keys(redis_url, redis_prefix, "revoke", key.id).returncode == 1  # nothing left to revoke


def test_bad_arguments_and_a_dead_redis_say_what_to_do(redis_prefix: str) -> None:
    from tests.services import free_port

    expiry = _keys("redis://127.0.0.1:6379/0", redis_prefix, "create", "x", "--expires", "soon")
    assert expiry.returncode == 2 and "30d" in expiry.stderr
    dead = _keys(f"redis://127.0.0.1:{free_port()}/0", redis_prefix, "list")
    assert dead.returncode == 1 and "does not answer" in dead.stderr


async def test_the_keys_file_is_put_into_redis_at_start_and_its_removed_keys_revoked(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    hashed_secret = "sk-hashed-in-the-file-0123456789"
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        "  - {name: plain, secret: sk-plain-secret-in-the-file-01, models: [m1], tpm: 500}\n"
        f"  - {{name: hashed, sha256: {digest(hashed_secret)}, expires: 2000-01-01}}\n"
    )
    replica = model_replica()
    settings = {"redis_url": redis_url, "redis_prefix": redis_prefix, "api_keys_file": path}  # auto: on
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **settings) as client:
        plain = await client.post(
            "/v1/chat/completions", content=chat(), headers={"x-api-key": "sk-plain-secret-in-the-file-01"}
        )
        expired = await client.post("/v1/chat/completions", content=chat(), headers={"x-api-key": hashed_secret})
        anonymous = await client.post("/v1/chat/completions", content=chat())
    assert plain.status_code == 200
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"
    assert anonymous.status_code == 401

    path.write_text("keys:\n  - {name: plain, secret: sk-plain-secret-in-the-file-01}\n")
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **settings):
        pass
    redis = Redis.from_url(redis_url)
    keys = await KeyStore(redis, redis_prefix).list_keys()
    await redis.aclose()
    assert [(k.id, k.models, k.tpm) for k in keys] == [("file-plain", None, None)]  # replaced; 'hashed' revoked


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("keys:\n  - {name: a}\n", "exactly one of 'secret' and 'sha256'"),
        ("keys:\n  - {name: a, sha256: nothex}\n", "64 hex digits"),
        ("keys:\n  - {name: a, secret: sk-0123456789abcdef, rpm: 0}\n", "rpm"),
        ("keys:\n  - {name: a, secret: sk-0123456789abcdef}\n  - {name: a, secret: sk-0123456789abcdeg}\n", "twice"),
        ("keys: [\n", "not valid YAML"),
    ],
)
def test_a_bad_keys_file_is_refused_with_what_to_fix_and_no_secret(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeysFileError) as caught:
        load_keys_file(path)
    assert problem in str(caught.value)
    assert "sk-0123456789abcdef" not in str(caught.value)


def test_expiry_syntax() -> None:
    assert parse_expiry("30d", now=1000.0) == 1000.0 + 30 * 86400
    assert parse_expiry("90m", now=0.0) == 5400.0
    midnight = datetime(2027, 1, 31, tzinfo=UTC).timestamp()
    assert parse_expiry("2027-01-31") == midnight  # UTC
    assert parse_expiry("2027-01-31T01:00:00+01:00") == midnight
    assert parse_expiry(str(midnight)) == midnight
    with pytest.raises(ValueError, match="duration"):
        parse_expiry("next week")
