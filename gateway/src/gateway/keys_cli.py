"""``python -m gateway keys create|list|revoke``: the API keys in the Redis of ``GATEWAY_REDIS_URL``.

``create`` prints the new secret alone on stdout (once: only its SHA-256 is stored), what it made on
stderr, so ``SECRET=$(python -m gateway keys create app)`` works. The other settings are read as the
gateway reads them (``GATEWAY_REDIS_PREFIX`` chooses the deployment's keys).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from chat_common.settings import settings_or_exit
from gateway.api_keys import ApiKey, KeyStore, parse_expiry
from gateway.config import Settings
from gateway.redis_state import REDIS_ERRORS, client, redacted

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key and print its secret (once)")
    create.add_argument("name", help="who or what the key is for (shown in list and in refusals)")
    create.add_argument("--models", help="comma-separated model or profile ids the key may use (default: all)")
    create.add_argument("--rpm", type=int, help="requests per minute of this key (default: no limit of its own)")
    create.add_argument("--tpm", type=int, help="tokens per minute of this key (default: no limit of its own)")
    create.add_argument("--expires", help="30d, 12h, an ISO date (2027-01-31) or Unix seconds (default: never)")
    commands.add_parser("list", help="the keys (never their secrets)")
    revoke = commands.add_parser("revoke", help="delete a key: requests with it are refused from now on")
    revoke.add_argument("key", help="the key's id (key-...), or its name when only one key has it")
    return parser


def _when(at: float | None) -> str:
    return "never" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(key: ApiKey) -> str:
    models = ",".join(key.models) if key.models is not None else "all"
    expiry = _when(key.expires_at) + (" (expired)" if key.expired() else "")
    return f"{key.id}  {key.name}  models={models}  rpm={key.rpm or '-'}  tpm={key.tpm or '-'}  expires={expiry}"


async def _run(args: argparse.Namespace, store: KeyStore) -> int:
    if args.command == "create":
        for limit in ("rpm", "tpm"):
            if getattr(args, limit) is not None and getattr(args, limit) < 1:
                print(f"--{limit} must be at least 1", file=sys.stderr)
                return 2
        try:
            expires_at = parse_expiry(args.expires) if args.expires else None
        except ValueError as exc:
            print(f"--expires: {exc}", file=sys.stderr)
            return 2
        models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
        key, secret = await store.create(args.name, models=models, rpm=args.rpm, tpm=args.tpm, expires_at=expires_at)
        print(f"created {_describe(key)}", file=sys.stderr)
        print("The secret below is shown this once; only its SHA-256 is stored.", file=sys.stderr)
        print(secret)
        return 0
    keys = await store.list_keys()
    if args.command == "list":
        for key in keys:
            print(_describe(key))
        if not keys:
            print("no API keys (create one: python -m gateway keys create NAME)", file=sys.stderr)
        return 0
    matches = [k for k in keys if k.id == args.key] or [k for k in keys if k.name == args.key]
    if len(matches) != 1:
        why = "no key has" if not matches else f"{len(matches)} keys have"
        print(f"{why} the id or name '{args.key}'; revoke by id (python -m gateway keys list)", file=sys.stderr)
        return 1
    await store.revoke(matches[0].id)
    print(f"revoked {_describe(matches[0])}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    settings = settings_or_exit(Settings)
    if settings.redis_url is None:
        print(
            "GATEWAY_REDIS_URL is empty: set it to the gateway's Redis (e.g. redis://127.0.0.1:6379/0).",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        redis = client(settings)
        try:
            return await _run(args, KeyStore(redis, settings.redis_prefix))
        except REDIS_ERRORS as exc:
            assert settings.redis_url is not None
            print(f"Redis at {redacted(settings.redis_url)} does not answer: {exc}", file=sys.stderr)
            return 1
        finally:
            await redis.aclose()

    return asyncio.run(run())
