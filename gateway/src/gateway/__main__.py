"""``python -m gateway``: read settings from the environment and serve; ``python -m gateway keys ...``:
manage API keys (:mod:`gateway.keys_cli`)."""

from __future__ import annotations

import gc
import sys

import uvicorn

from chat_common.logging import configure_logging
from chat_common.settings import settings_or_exit
from gateway.app import Gateway
from gateway.config import Settings
from gateway.keys_file import KeysFileError
from gateway.profiles import ProfileFileError

# Young-generation collections every 10,000 net allocations instead of CPython's 700. With dozens of
# requests in flight, their live objects alone cross 700 over and over: each pass found next to nothing
# to free and pushed the in-flight objects on to older generations, whose passes then walked the whole
# heap (about 30 ms each, a stall for every open stream). Requests leave next to no cyclic garbage
# (10,000 streamed requests did not reach the new threshold once), so memory does not grow for it.
# The measurement is in bench/RESULTS.md (gateway overhead).
GC_GEN0_THRESHOLD = 10_000


def main() -> None:
    if sys.argv[1:2] == ["keys"]:  # python -m gateway keys create|list|revoke
        from gateway.keys_cli import main as keys_main

        raise SystemExit(keys_main(sys.argv[2:]))
    settings = settings_or_exit(Settings)
    configure_logging("gateway", settings.log_level)
    try:
        app = Gateway(settings)
    except (ProfileFileError, KeysFileError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Everything imported and built so far lives as long as the process: keep it out of every later
    # collection, so that the passes that do run walk only what requests allocate.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


if __name__ == "__main__":
    main()
