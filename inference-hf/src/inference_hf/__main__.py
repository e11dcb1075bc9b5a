"""``python -m inference_hf``: read settings from the environment and serve.
``python -m inference_hf prepare``: convert the GGUF files the models need, with a progress bar, and exit."""

from __future__ import annotations

import logging
import sys

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from inference_hf.catalog import CatalogError
from inference_hf.config import Settings


def main() -> None:
    if sys.argv[1:2] == ["prepare"]:
        from inference_hf.cli import main as prepare

        raise SystemExit(prepare(sys.argv[2:]))
    if sys.argv[1:]:
        print("usage: python -m inference_hf [prepare [--gguf FILE] [--cache-dir DIR]]", file=sys.stderr)
        raise SystemExit(2)
    settings = settings_or_exit(Settings)
    configure_logging("inference-hf", settings.log_level)
    _quiet_libraries()

    import uvicorn

    from inference_hf.app import create_app

    try:
        app = create_app(settings)
    except CatalogError as exc:
        logging.getLogger("inference_hf").error(str(exc))
        raise SystemExit(2) from None
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


def _quiet_libraries() -> None:
    """Keep the service's output JSON lines: transformers' warnings go through the root logger, and its
    tqdm bars (loading weights) are off; GGUF preparation logs its progress instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


if __name__ == "__main__":
    main()
