"""``python -m retriever``: read settings from the environment and serve; ``python -m retriever ingest ...`` and
``python -m retriever import-seed ...`` are clients of a running service (see :mod:`retriever.cli`).

The service's modules (FastAPI, FAISS...) are imported only to serve, so the client commands start quickly.
"""

from __future__ import annotations

import sys

from retriever.cli import main as client_main
from retriever.cli import wants_client


def serve() -> None:
    import uvicorn

    from chat_common.logging import configure_logging
    from chat_common.settings import settings_or_exit
    from retriever.app import create_app
    from retriever.config import Settings

    settings = settings_or_exit(Settings)
    configure_logging("retriever", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)


def main() -> None:
    argv = sys.argv[1:]
    if wants_client(argv):
        raise SystemExit(client_main(argv))
    serve()


if __name__ == "__main__":
    main()
