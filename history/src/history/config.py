"""Settings of the history service, read from ``HISTORY_*`` environment variables.

The store is MongoDB when a URI is set (``HISTORY_MONGODB_URI``, or ``MONGODB_URI`` as the seed deployments
name it), else the embedded SQLite file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HISTORY_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8004, ge=1, le=65535, description="Port to listen on.")
    sqlite_path: Path = Field(
        Path("var/history.sqlite3"),
        description="SQLite database file, used when no MongoDB URI is set; a relative path is relative to the "
        "working directory. Its folder is created if missing.",
    )
    sqlite_busy_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait, in seconds, for another process's write on the same SQLite file; past it the "
        "request fails with 503.",
    )
    mongodb_uri: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("HISTORY_MONGODB_URI", "MONGODB_URI"),
        description="MongoDB connection string (mongodb:// or mongodb+srv://); when set, MongoDB is the store. "
        "MONGODB_URI is accepted too. Never logged.",
    )
    mongodb_database: str = Field("switchboard", min_length=1, description="MongoDB database to use.")
    mongodb_timeout_s: float = Field(
        2.0,
        gt=0,
        description="How long to look for a reachable MongoDB server (server selection) before a request fails "
        "with 503, in seconds.",
    )
    store_retry_interval_s: float = Field(
        5.0,
        gt=0,
        description="When the store cannot be opened at start, seconds between further attempts (/ready is 503 "
        "until one succeeds).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("mongodb_uri", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _mongodb_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        # settings_or_exit never prints a secret's value, so the message can't leak a password
        if value is not None and not value.get_secret_value().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv:// (value not shown: it may hold a password)")
        return value
