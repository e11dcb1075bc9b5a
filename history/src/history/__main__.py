"""``python -m history``: read settings from the environment and serve."""

from __future__ import annotations

import sys

import uvicorn

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from history.app import create_app
from history.config import Settings


def main() -> None:
    settings = settings_or_exit(Settings)
    uri = settings.mongodb_uri.get_secret_value() if settings.mongodb_uri is not None else None
    if uri is not None and not uri.startswith(("mongodb://", "mongodb+srv://")):
        # Checked here rather than by a validator: pydantic's error would echo the URI, password included.
        print("invalid configuration for history:\n  HISTORY_MONGODB_URI (or MONGODB_URI): must start with "
              "mongodb:// or mongodb+srv:// (value not shown: it may hold a password)\n"
              "Fix the variable (see README.md, 'Configuration') and start again.", file=sys.stderr)
        raise SystemExit(2)
    configure_logging("history", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
