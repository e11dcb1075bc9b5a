"""Profiles (personas): a named model with a system prompt, an optional knowledge base appended to it,
sampling defaults, reasoning tags and guardrails, read from a YAML file (``GATEWAY_PROFILES_FILE``).

A profile is chosen per request by its id as ``model`` (profiles are listed in ``GET /v1/models`` as
virtual models), by the ``profile`` body field, or by the ``X-Switchboard-Profile`` header (field and
header win over ``model``). :func:`load_profiles` fails with :class:`ProfileFileError`, whose message
names the file and the field, so a bad file stops the gateway at start instead of failing requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gateway.guardrails import Guardrail

__all__ = ["PROFILE_HEADER", "Profile", "ProfileFileError", "Profiles", "load_profiles"]

PROFILE_HEADER = b"x-switchboard-profile"
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "repeat_penalty", "presence_penalty", "seed")


class ReasoningTags(BaseModel):
    model_config = ConfigDict(extra="forbid")

    open: Annotated[str, Field(min_length=1)] = "<think>"
    close: Annotated[str, Field(min_length=1)] = "</think>"


class Guardrails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    banned: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    fallback: Annotated[str, Field(min_length=1)] = "I'm sorry, I can't help with that."


class Profile(BaseModel):
    """One persona. ``system_prompt`` plus the knowledge file's text is the system message put first in
    every request of the profile; ``sampling`` fills the fields a request leaves unset."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:-]+$")]
    model: Annotated[str, Field(min_length=1)]
    description: str = ""
    system_prompt: str = ""
    knowledge_file: Path | None = None
    knowledge: str = Field("", exclude=True)  # the knowledge file's text, read by load_profiles
    sampling: dict[str, Any] = Field(default_factory=dict)
    reasoning: ReasoningTags | None = None  # None: the answer is passed on without splitting
    guardrails: Guardrails | None = None
    cache: bool = False  # deterministic requests answered from the response cache (gateway.cache)
    _guardrail: Guardrail | None = PrivateAttr(default=None)

    @field_validator("sampling")
    @classmethod
    def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(SAMPLING))
        if unknown:
            raise ValueError(f"unknown sampling field(s) {unknown}; allowed: {list(SAMPLING)}")
        return value

    @property
    def system_message(self) -> str:
        parts = [p.strip() for p in (self.system_prompt, self.knowledge) if p.strip()]
        return "\n\n".join(parts)

    def guardrail(self) -> Guardrail | None:
        """The compiled banned phrases (compiled once; None without any)."""
        if self.guardrails is None or not self.guardrails.banned:
            return None
        if self._guardrail is None:
            self._guardrail = Guardrail(self.guardrails.banned, self.guardrails.fallback)
        return self._guardrail

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        """A chat request body for this profile: its model, its system message first (a request's own
        system messages come after it), its sampling defaults where the request sets none."""
        out = {k: v for k, v in data.items() if k != "profile"}
        out["model"] = self.model
        for key, value in self.sampling.items():
            if key == "max_tokens" and ("max_tokens" in out or "max_completion_tokens" in out):
                continue
            out.setdefault(key, value)
        messages = data.get("messages")
        if self.system_message and isinstance(messages, list) and messages:  # bad 'messages' stays bad (400)
            out["messages"] = [{"role": "system", "content": self.system_message}, *messages]
        return out

    def card(self) -> dict[str, Any]:
        """The profile's entry in ``GET /v1/models``."""
        return {
            "id": self.id,
            "object": "model",
            "created": 0,
            "owned_by": "switchboard-profile",
            "profile": {"model": self.model, "description": self.description},
        }


class ProfilesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profiles: list[Profile]

    @model_validator(mode="after")
    def _unique(self) -> ProfilesFile:
        seen: set[str] = set()
        for profile in self.profiles:
            if profile.id in seen:
                raise ValueError(f"profile id '{profile.id}' is defined twice")
            seen.add(profile.id)
        return self


class ProfileFileError(Exception):
    """The profiles file cannot be used; the message says where and what to fix."""


class Profiles:
    """The configured profiles by id (empty when no file is configured)."""

    def __init__(self, profiles: list[Profile] | None = None) -> None:
        self.by_id = {p.id: p for p in profiles or []}

    def get(self, profile_id: str) -> Profile | None:
        return self.by_id.get(profile_id)

    def cards(self) -> list[dict[str, Any]]:
        return [self.by_id[i].card() for i in sorted(self.by_id)]

    def __len__(self) -> int:
        return len(self.by_id)


def load_profiles(path: Path | None) -> Profiles:
    """The profiles of the YAML file at ``path`` (knowledge files relative to it); none when ``path`` is
    None. Raises :class:`ProfileFileError` for a missing, unparsable or invalid file."""
    if path is None:
        return Profiles()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileFileError(f"Cannot read the profiles file {path} (GATEWAY_PROFILES_FILE): {exc}.") from None
    except yaml.YAMLError as exc:
        raise ProfileFileError(f"The profiles file {path} is not valid YAML: {exc}") from None
    try:
        parsed = ProfilesFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ProfileFileError(
            f"The profiles file {path} is invalid: {problems}. It needs 'profiles:', a list of entries with "
            "at least 'id' and 'model' (see deploy/profiles.yaml)."
        ) from None
    for profile in parsed.profiles:
        if profile.knowledge_file is not None:
            source = (
                profile.knowledge_file if profile.knowledge_file.is_absolute() else path.parent / profile.knowledge_file
            )
            try:
                profile.knowledge = source.read_text(encoding="utf-8")
            except OSError as exc:
                raise ProfileFileError(
                    f"The profiles file {path}: profile '{profile.id}' names knowledge_file {source}, which "
                    f"cannot be read: {exc}."
                ) from None
        try:
            profile.guardrail()
        except ValueError as exc:
            raise ProfileFileError(f"The profiles file {path}: profile '{profile.id}': {exc}.") from None
    return Profiles(parsed.profiles)
