"""Start-up helper: build a service's Settings or stop with a message that names the bad variable."""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

__all__ = ["settings_or_exit"]

S = TypeVar("S", bound=BaseSettings)


def settings_or_exit(cls: type[S]) -> S:
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {cls.__module__.split('.')[0]}:"]
        for error in exc.errors():
            loc = "_".join(str(part) for part in error["loc"]).upper()
            # A field read through an alias is reported under the alias, which is already a full name.
            name = loc if loc.startswith(prefix.upper()) or loc not in _field_names(cls) else prefix.upper() + loc
            shown = "" if _is_secret(cls, error["loc"]) else f" (got {error.get('input')!r})"
            lines.append(f"  {name}: {error['msg']}{shown}")
        lines.append("Fix the variables above (see README.md, 'Configuration') and start again.")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def _field_names(cls: type[BaseSettings]) -> set[str]:
    return {name.upper() for name in cls.model_fields}


def _is_secret(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> bool:
    """Secrets (``SecretStr`` fields, or any field an alias points to that is one) are never echoed."""
    first = str(loc[0]).lower() if loc else ""
    for name, field in cls.model_fields.items():
        aliases = {name}
        alias = field.validation_alias
        if isinstance(alias, str):
            aliases.add(alias.lower())
        elif isinstance(alias, AliasChoices):
            aliases.update(str(choice).lower() for choice in alias.choices)
        if first in aliases:
            return "Secret" in repr(field.annotation)
    return True  # unknown location: say less rather than more
