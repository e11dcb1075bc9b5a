"""Serve the gateway (``python -m gateway``'s settings and server) with a Redis client on ``app.state.redis``
for the benchmarks: ``BENCH_REDIS_URL``. (Where the gateway opens its own client from
``GATEWAY_REDIS_URL``, this is ``python -m gateway`` with that setting.)

    BENCH_REDIS_URL=redis://127.0.0.1:6390/0 python bench/gateway_on_redis.py
"""

from __future__ import annotations

import gc
import os

import uvicorn
from redis.asyncio import Redis

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from gateway.__main__ import GC_GEN0_THRESHOLD
from gateway.app import Gateway
from gateway.config import Settings


def main() -> None:
    settings = settings_or_exit(Settings)
    configure_logging("gateway", settings.log_level)
    app = Gateway(settings)
    # No connection is made here: the client's pool connects on the server's event loop, at first use.
    app.api.state.redis = Redis.from_url(os.environ["BENCH_REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
