"""Start-up helper: build a service's Settings or stop with a message that names the bad variable."""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError
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
            name = prefix + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"  {name}: {error['msg']} (got {error.get('input')!r})")
        lines.append("Fix the variables above (see README.md, 'Configuration') and start again.")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
