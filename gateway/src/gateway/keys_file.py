"""API keys from a file (``GATEWAY_API_KEYS_FILE``), for simple setups: put into Redis at every start.

The file is YAML (JSON is YAML too)::

    keys:
      - name: frontend
        sha256: 9f86d081...       # the SHA-256 (hex) of the secret: the file then holds no secret
        models: [smollm2-135m-instruct, cern]    # optional: every model when absent
        rpm: 60                   # optional
        tpm: 20000                # optional
        expires: 2027-01-31       # optional: ISO date or date-time, or Unix seconds
      - name: batch-job
        secret: sk-...            # or the secret itself (hashed before it reaches Redis)

The file's keys are stored under the id ``file-<name>``; at every start they replace what Redis held
for them, and a ``file-`` key no longer in the file is revoked. Keys made with the CLI are left alone.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.api_keys import ApiKey, KeyStore, digest, parse_expiry

__all__ = ["FILE_ID_PREFIX", "KeysFileError", "load_keys_file", "seed_keys"]

logger = logging.getLogger(__name__)

FILE_ID_PREFIX = "file-"


class KeysFileError(Exception):
    """The keys file cannot be used; the message says where and what to fix."""


class FileKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    secret: str | None = Field(None, min_length=16)
    sha256: str | None = None
    models: list[str] | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    expires: str | float | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
            raise ValueError("sha256 must be 64 hex digits (sha256sum of the secret)")
        return value.lower() if value else None

    @field_validator("expires", mode="before")
    @classmethod
    def _expiry(cls, value: object) -> object:
        return str(value) if value is not None and not isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _one_secret(self) -> FileKey:
        if (self.secret is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'secret' and 'sha256'")
        return self


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[FileKey] = Field(default_factory=list)


def load_keys_file(path: Path) -> list[tuple[ApiKey, str]]:
    """The file's keys with the SHA-256 of their secrets. Raises :class:`KeysFileError`."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeysFileError(f"Cannot read the API keys file {path} (GATEWAY_API_KEYS_FILE): {exc}.") from None
    except yaml.YAMLError as exc:
        raise KeysFileError(f"The API keys file {path} is not valid YAML: {exc}") from None
    try:
        parsed = KeysFile.model_validate(raw or {})
        keys = []
        for entry in parsed.keys:
            expires = None if entry.expires is None else parse_expiry(str(entry.expires))
            models = tuple(entry.models) if entry.models is not None else None
            key = ApiKey(FILE_ID_PREFIX + entry.name, entry.name, models, entry.rpm, entry.tpm, expires)
            keys.append((key, entry.sha256 or digest(entry.secret or "")))
    except (ValidationError, ValueError) as exc:
        raise KeysFileError(f"The API keys file {path} (GATEWAY_API_KEYS_FILE) is invalid: {_problem(exc)}") from None
    names = [key.name for key, _ in keys]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise KeysFileError(f"The API keys file {path} names a key twice: {', '.join(duplicates)}.")
    return keys


def _problem(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}")  # never the input: it may be a secret
    return "; ".join(problems)


async def seed_keys(store: KeyStore, keys: list[tuple[ApiKey, str]]) -> None:
    """Put the file's keys into Redis and revoke the ``file-`` keys the file no longer has."""
    wanted = {key.id for key, _ in keys}
    for key, secret_digest in keys:
        await store.put(key, secret_digest)
    for old in await store.list_keys():
        if old.id.startswith(FILE_ID_PREFIX) and old.id not in wanted:
            await store.revoke(old.id)
            logger.info("auth: revoked %s, no longer in GATEWAY_API_KEYS_FILE", old.id)
    logger.info("auth: %d key(s) from GATEWAY_API_KEYS_FILE put into Redis", len(keys))
