"""API keys: :class:`ApiKey` (what a request's key allows) and :class:`KeyStore` (the keys in Redis).

A key's secret (``sk-...``) is shown once, when it is created, and never stored: Redis holds the SHA-256
of it. Layout, under the ``GATEWAY_REDIS_PREFIX`` (``switchboard:``):

- ``{prefix}apikey:{sha256 hex}``: a hash with the key's record (``id``, ``name``, ``models`` as a JSON
  list or empty for every model, ``rpm``, ``tpm``, ``expires_at`` (Unix seconds) and ``created_at``;
  an absent limit or expiry is an empty string). A request's check is one ``HGETALL`` of it.
- ``{prefix}apikeys``: a hash from key id to that SHA-256, for listing and revoking by id.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from gateway.resp import FastConnection

__all__ = ["ApiKey", "KeyStore", "digest", "new_secret", "parse_expiry"]

SECRET_PREFIX = "sk-"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A verified key's record: put in ``scope["state"]["api_key"]`` for every authenticated request.

    ``models``: the model (and profile) ids the key may name; None for every model. ``rpm`` / ``tpm``:
    its own requests and tokens per minute (None: no limit of its own). ``expires_at``: Unix seconds, or
    None for a key that does not expire.
    """

    id: str
    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: float | None = None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def digest(secret: str) -> str:
    """The SHA-256 (hex) of a secret: what Redis stores and looks a key up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A fresh secret: ``sk-`` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, now: float | None = None) -> float:
    """Unix seconds from ``30d`` / ``12h`` / ``90m`` (from now), an ISO date or date-time (UTC unless it
    says otherwise), or Unix seconds. Raises ValueError with what is accepted."""
    text = text.strip()
    duration = _DURATION.match(text)
    if duration:
        return (time.time() if now is None else now) + float(duration[1]) * _SECONDS[duration[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is not an expiry: use a duration (30d, 12h, 90m), an ISO date (2027-01-31 or "
            "2027-01-31T12:00:00+00:00) or Unix seconds"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _optional_int(raw: bytes | None) -> int | None:
    return int(raw) if raw else None


def _record(key: ApiKey, created_at: float) -> dict[FieldT, EncodableT]:
    return {
        "id": key.id,
        "name": key.name,
        "models": orjson.dumps(list(key.models)).decode() if key.models is not None else "",
        "rpm": "" if key.rpm is None else str(key.rpm),
        "tpm": "" if key.tpm is None else str(key.tpm),
        "expires_at": "" if key.expires_at is None else repr(key.expires_at),
        "created_at": repr(created_at),
    }


def _key(fields: Mapping[bytes, bytes]) -> ApiKey:
    models = fields.get(b"models")
    expires = fields.get(b"expires_at")
    return ApiKey(
        id=fields[b"id"].decode(),
        name=fields.get(b"name", b"").decode(),
        models=tuple(orjson.loads(models)) if models else None,
        rpm=_optional_int(fields.get(b"rpm")),
        tpm=_optional_int(fields.get(b"tpm")),
        expires_at=float(expires) if expires else None,
    )


class KeyStore:
    """The API keys in Redis (``redis`` answers bytes: ``decode_responses=False``)."""

    def __init__(self, redis: Redis, prefix: str, *, fast: FastConnection | None = None) -> None:
        self.redis = redis
        self.fast = fast  # the hot path's lean connection (gateway.resp), for lookup(): every request's
        self._index = f"{prefix}apikeys"
        self._record = f"{prefix}apikey:"

    async def lookup(self, secret: str) -> ApiKey | None:
        """The key whose secret this is (expired ones included: the caller decides), or None."""
        return await self.lookup_digest(digest(secret))

    async def lookup_digest(self, secret_digest: str) -> ApiKey | None:
        """:meth:`lookup` by the SHA-256 of the secret."""
        if self.fast is not None:
            flat = await self.fast.call("HGETALL", self._record + secret_digest)
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
        else:
            fields = cast(dict[bytes, bytes], await self.redis.hgetall(self._record + secret_digest))
        return _key(fields) if fields.get(b"id") else None

    async def create(
        self,
        name: str,
        *,
        models: tuple[str, ...] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the client's hands)."""
        key = ApiKey("key-" + secrets.token_hex(6), name, models, rpm, tpm, expires_at)
        secret = new_secret()
        await self.put(key, digest(secret))
        return key, secret

    async def put(self, key: ApiKey, secret_digest: str) -> None:
        """Store ``key`` under the SHA-256 of its secret, replacing any key with the same id."""
        old = cast(bytes | None, await self.redis.hget(self._index, key.id))
        async with self.redis.pipeline(transaction=True) as pipe:
            if old is not None and old.decode() != secret_digest:
                pipe.delete(self._record + old.decode())
            pipe.delete(self._record + secret_digest)
            pipe.hset(self._record + secret_digest, mapping=_record(key, time.time()))
            pipe.hset(self._index, key.id, secret_digest)
            await pipe.execute()

    async def list_keys(self) -> list[ApiKey]:
        """Every key, oldest id order not guaranteed (sorted by name, then id)."""
        index = cast(dict[bytes, bytes], await self.redis.hgetall(self._index))
        keys = []
        for record in index.values():
            fields = cast(dict[bytes, bytes], await self.redis.hgetall(self._record + record.decode()))
            if fields.get(b"id"):
                keys.append(_key(fields))
        return sorted(keys, key=lambda k: (k.name, k.id))

    async def revoke(self, key_id: str) -> bool:
        """Delete the key with this id; False when there is none. Requests with it fail from now on."""
        record = cast(bytes | None, await self.redis.hget(self._index, key_id))
        if record is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._record + record.decode())
            pipe.hdel(self._index, key_id)
            await pipe.execute()
        return True

    async def count(self) -> int:
        return int(await self.redis.hlen(self._index))
