"""Which profile a chat request is for, and the request rewritten for it.

Precedence: the ``X-Switchboard-Profile`` header, then the ``profile`` body field, then ``model`` when
it is a profile id. A header or field naming no configured profile is a 404 in OpenAI's envelope.
"""

from __future__ import annotations

from typing import Any

from chat_common.errors import APIError
from gateway.profiles import PROFILE_HEADER, Profile, Profiles

__all__ = ["select_profile"]


def select_profile(
    profiles: Profiles, data: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> tuple[Profile | None, dict[str, Any]]:
    """``(profile, body)``: the profile asked for (None when none is) and the body to validate and send."""
    named = next((v.decode("latin-1").strip() for k, v in headers if k.lower() == PROFILE_HEADER), None)
    param = "X-Switchboard-Profile"
    if not named and "profile" in data:
        named, param = data["profile"], "profile"
        if not isinstance(named, str) or not named:
            raise APIError(400, "'profile' must be a profile id (a string).", param="profile", code="invalid_value")
    if named:
        profile = profiles.get(named)
        if profile is None:
            known = ", ".join(sorted(profiles.by_id)) or "none are configured (GATEWAY_PROFILES_FILE)"
            raise APIError(
                404,
                f"The profile '{named}' does not exist. Known profiles: {known}.",
                param=param,
                code="profile_not_found",
            )
        return profile, profile.apply(data)
    model = data.get("model")
    profile = profiles.get(model) if isinstance(model, str) else None
    if profile is None:
        return None, data
    return profile, profile.apply(data)
