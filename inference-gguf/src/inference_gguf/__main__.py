"""``python -m inference_gguf``: read settings from the environment and serve."""

from __future__ import annotations

import logging

import uvicorn

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from inference_gguf.app import create_app
from inference_gguf.catalog import CatalogError
from inference_gguf.config import Settings


def main() -> None:
    settings = settings_or_exit(Settings)
    configure_logging("inference-gguf", settings.log_level)
    try:
        app = create_app(settings)
    except CatalogError as exc:
        logging.getLogger("inference_gguf").error(str(exc))
        raise SystemExit(2) from None
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
