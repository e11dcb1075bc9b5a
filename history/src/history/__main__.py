"""``python -m history``: read settings from the environment and serve."""

from __future__ import annotations

import uvicorn

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from history.app import create_app
from history.config import Settings


def main() -> None:
    settings = settings_or_exit(Settings)
    configure_logging("history", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
