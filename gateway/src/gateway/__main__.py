"""``python -m gateway``: read settings from the environment and serve."""

from __future__ import annotations

import uvicorn

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from gateway.app import Gateway
from gateway.config import Settings


def main() -> None:
    settings = settings_or_exit(Settings)
    configure_logging("gateway", settings.log_level)
    uvicorn.run(Gateway(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False)


if __name__ == "__main__":
    main()
