"""App factories: ``Gateway(settings)`` is the ASGI app the gateway serves, ``create_app(settings)`` its
FastAPI part, whose lifespan opens the pooled upstream HTTP client and the Redis client, reads every
service's /v1/models once, and keeps re-reading them in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress

import aiohttp
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from chat_common.errors import install_error_handlers
from chat_common.middleware import RequestContextMiddleware
from gateway.answer import AnswerFilter
from gateway.api_keys import ApiKey, KeyStore
from gateway.auth import Authentication, KeyCache
from gateway.cache import ResponseCache
from gateway.chat import ChatRoutes
from gateway.compat import ROUTERS as COMPAT_ROUTERS
from gateway.config import Settings, is_loopback
from gateway.cors import with_cors
from gateway.discovery import AddressPool, make_resolver
from gateway.history import HistoryClient
from gateway.keys_file import load_keys_file, seed_keys
from gateway.ledger import Ledger
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.model_admin import router as model_admin_router
from gateway.openapi import install_openapi
from gateway.profiles import load_profiles
from gateway.proxy import Proxy
from gateway.redis_state import REDIS_ERRORS, open_redis
from gateway.registry import Registry
from gateway.resp import fast_connection_for
from gateway.retrieval import RetrieverClient
from gateway.routes import router

__all__ = ["Gateway", "create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app of every route but the chat hot path; serve it through :class:`Gateway`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Idle connections are dropped before the services' own keep-alive timeout (uvicorn: 5 s) ends them.
        connector = aiohttp.TCPConnector(limit=settings.max_upstream_connections, limit_per_host=0, keepalive_timeout=4)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
            )
            app.state.redis = redis = await stack.enter_async_context(open_redis(settings))
            # one lean pipelined connection for the hot path's calls: key lookups, limits, cache (gateway.resp),
            # the limits' and the cache's calls batched on it (gateway.ledger)
            fast = fast_connection_for(redis) if redis is not None else None
            if fast is not None:
                stack.callback(fast.close)
            if redis is not None:  # at shutdown, queued corrections and answers go out before the connection closes
                app.state.limiter.ledger = Ledger(redis, fast)
                stack.push_async_callback(app.state.limiter.ledger.drain)
            app.state.api_keys = KeyStore(redis, settings.redis_prefix, fast=fast) if redis is not None else None
            if app.state.api_keys is not None and file_keys is not None:
                try:
                    await seed_keys(app.state.api_keys, file_keys)
                except REDIS_ERRORS as exc:
                    seeder = asyncio.create_task(_seed_until_done(app.state.api_keys, file_keys, exc))
                    stack.callback(seeder.cancel)
            await _warn_about_auth(settings, app.state.api_keys)
            resolver = make_resolver(settings.dns_nameservers)
            registry = Registry(
                settings.services,
                client,
                timeout_s=settings.connect_timeout_s,
                resolver=resolver,
                breaker_threshold=settings.breaker_threshold,
                breaker_cooldown_s=settings.breaker_cooldown_s,
                affinity_max_in_flight=settings.affinity_max_in_flight,
            )
            app.state.history = HistoryClient(settings.history_url, client) if settings.history_url else None
            app.state.retriever = (
                RetrieverClient(settings.retriever_url, client, timeout_s=settings.retriever_timeout_s)
                if settings.retriever_url
                else None
            )
            app.state.proxy = Proxy(registry, client, GatewayMetrics(CollectorRegistry()), settings.read_timeout_s)
            # A helper service whose name has several addresses (`--scale retriever-read=3`) is asked in turn.
            pools = []
            for helper in (app.state.history, app.state.retriever):
                if helper is not None:
                    helper.pool = AddressPool(helper.base_url, resolver)
                    pools.append(helper.pool)
            await asyncio.gather(registry.refresh(), *(pool.refresh() for pool in pools))
            refresher = asyncio.create_task(registry.run(settings.refresh_interval_s))
            pool_refresher = asyncio.create_task(_refresh_pools(pools, settings.refresh_interval_s))
            try:
                yield
            finally:
                for task in (refresher, pool_refresher):
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
                await resolver.close()

    # KeysFileError: the gateway does not start
    file_keys = load_keys_file(settings.api_keys_file) if settings.api_keys_file is not None else None
    # /docs and /redoc load their scripts from the gateway itself (fastapi-offline ships them): no CDN.
    app = FastAPIOffline(title="Switchboard gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = None  # the lifespan opens it (gateway.redis_state); None without GATEWAY_REDIS_URL
    app.state.api_keys = None
    app.state.profiles = load_profiles(settings.profiles_file)  # ProfileFileError: the gateway does not start
    # Every chat answer passes through these, in order (gateway.answer.model_answer); none by default.
    answer_filters: list[AnswerFilter] = []
    app.state.answer_filters = answer_filters
    # Rate limits (gateway.limits) and the response cache (gateway.cache), in the Redis of app.state.redis.
    app.state.cache = ResponseCache(
        ttl_s=settings.cache_ttl_s, max_entry_bytes=settings.cache_max_entry_bytes, prefix=settings.redis_prefix
    )
    app.state.limiter = Limiter(
        settings.rate_limits,
        anonymous=settings.rate_limit_anonymous,
        failure=settings.redis_failure,
        prefix=f"{settings.redis_prefix}rl:",
        lease_s=settings.rate_limit_lease_s,
    )
    install_error_handlers(app)
    app.include_router(router)
    for compat_router in COMPAT_ROUTERS:
        app.include_router(compat_router)
    app.include_router(model_admin_router)
    install_openapi(app, auth=settings.auth_enabled)  # + the chat hot path's routes and the API key schemes
    return app


async def _seed_until_done(store: KeyStore, keys: list[tuple[ApiKey, str]], error: Exception) -> None:
    """The keys file into Redis once it answers: retried every 2 s."""
    while True:
        logger.warning("auth: the keys of GATEWAY_API_KEYS_FILE wait for Redis (%s); retrying in 2 s", error)
        await asyncio.sleep(2)
        try:
            await seed_keys(store, keys)
            return
        except REDIS_ERRORS as exc:
            error = exc


async def _warn_about_auth(settings: Settings, keys: KeyStore | None) -> None:
    """The loud start-up lines an operator must not miss: an open gateway on a network, or one without keys."""
    if not settings.auth_enabled:
        if not is_loopback(settings.host):
            logger.warning(
                "auth: GATEWAY_AUTH=off on the bind %s: ANYONE WHO CAN REACH PORT %d CAN USE EVERY MODEL. "
                "Create a key (`python -m gateway keys create NAME`) and set GATEWAY_AUTH=auto (or on), or bind "
                "GATEWAY_HOST=127.0.0.1.",
                settings.host,
                settings.port,
            )
        else:
            logger.info("auth: off (loopback bind %s; GATEWAY_AUTH=%s)", settings.host, settings.auth)
        return
    assert keys is not None  # Settings refuse auth without GATEWAY_REDIS_URL
    try:
        count = await keys.count()
    except REDIS_ERRORS:
        logger.info("auth: on; the keys are counted once Redis answers")
        return
    if count == 0:
        logger.warning(
            "auth: on, but Redis holds NO API KEY: every request but the probes and the docs is refused "
            "with 401. Create one with `GATEWAY_REDIS_URL=... python -m gateway keys create NAME` (it prints the "
            "secret once), or set GATEWAY_AUTH=off on a trusted network."
        )
    else:
        logger.info("auth: on, %d API key(s) in Redis", count)


class Gateway:
    """The ASGI app the gateway serves: request ids and access lines around everything, the chat hot
    path (:class:`gateway.chat.ChatRoutes`) answered first, and the FastAPI app for the rest.

    FastAPI's own per-request layers (telemetry probes, body-limit and exception middleware, routing,
    dependency solving) cost about a third of the streaming throughput, so chat requests skip them.
    ``api`` is the FastAPI app: its lifespan starts the upstream client and its ``state`` holds it.

    The stack, outermost first: request context (request id, access line), CORS when configured
    (:mod:`gateway.cors`: preflights answered before any key is asked for), then admission
    (authentication, :class:`gateway.auth.Authentication`), then the routes (chat hot path, then
    FastAPI). Every request passes admission, chat or not, before any body is read, and a refusal it
    renders still carries the request id and gets its access line. Rate limits and the response cache
    need the request's model, so each chat route admits it once its body is validated
    (:func:`gateway.limits.admit_chat`).
    """

    def __init__(self, settings: Settings) -> None:
        self.api = create_app(settings)
        routes = ChatRoutes(self.api, state=self.api.state)
        admission = Authentication(
            routes, state=self.api.state, enabled=settings.auth_enabled, cache=KeyCache(settings.auth_cache_s)
        )
        self._stack = RequestContextMiddleware(with_cors(admission, settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)


async def _refresh_pools(pools: list[AddressPool], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.gather(*(pool.refresh() for pool in pools))
