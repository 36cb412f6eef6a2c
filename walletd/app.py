"""The composition root: builds the aiohttp app, wires resources, routes and middlewares.

Resources start and stop through cleanup_ctx, one generator each, in this order: pool, then
ledger + actors, then the HTTP client; aiohttp closes them in reverse, so on shutdown the actors
drain their accepted commands while the pool is still open, and a failure while starting one
closes those already started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import itertools
import os
import time

import aiohttp
import structlog
from aiohttp import web

from walletd import metrics, server
from walletd.actors.committer import GroupCommitter
from walletd.actors.registry import ActorRegistry
from walletd.appkeys import database_url_key, history_pool_key, http_key, ledger_key, pool_key, principal_key, registry_key, request_id_key, settings_key, tokens_key
from walletd.auth.tokens import TokenIssuer
from walletd.config import ConfigError, Settings
from walletd.domain.errors import DomainError, Unavailable
from walletd.events.delivery import WebhookDispatcher, dispatcher_key
from walletd.events.expiry import PendingExpirySweeper
from walletd.handlers import endpoint, identity, meta, money, openapi, service, wallets, webhooks
from walletd.handlers.errors import challenge_key, domain_error_response, error_response, http_error_response
from walletd.logs import get_logger
from walletd.persistence.db import create_pool
from walletd.persistence.failures import UNAVAILABLE, is_unavailable, outage
from walletd.persistence.ledger import PgLedger
from walletd.persistence.retention import IdempotencySweeper
from walletd.supervisor import start_supervised, stop_task

log = get_logger("walletd.http")
ROUTE_TABLES = (identity.routes, wallets.routes, money.routes, service.routes, webhooks.routes)


# Request ids: unique per process start (random prefix) and per request (counter). No system
# call per request, unlike uuid4.
_REQUEST_PREFIX = os.urandom(4).hex() + "-"
_request_counter = itertools.count(1)


@web.middleware
async def request_context(request: web.Request, handler):
    """One canonical log line per request, with a request id (echoed as X-Request-ID), and every
    failure rendered as {"status", "message", ...}: nothing a client sends yields a 500.

    Only the path is logged, never the query string: the original's clients send passwords in it.
    """
    incoming = request.headers.get("X-Request-ID", "")
    if 0 < len(incoming) <= 64 and incoming.isprintable():
        request_id = incoming
    else:
        request_id = f"{_REQUEST_PREFIX}{next(_request_counter):x}"
    request[request_id_key] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
        response = error_for(exc, request)
    response.headers["X-Request-ID"] = request_id
    route = request.match_info.route.resource
    template = route.canonical if route is not None else None
    elapsed = time.perf_counter() - started
    metrics.observe_request(request.method, template, response.status, elapsed)
    log.info("http.request", method=request.method, path=request.path, route=template, status=response.status,
             duration_ms=round(elapsed * 1000, 2), principal=request.get(principal_key))
    return response


def error_for(exc: Exception, request: web.Request) -> web.StreamResponse:
    request_id = request.get(request_id_key)
    if isinstance(exc, DomainError):
        return domain_error_response(exc, request_id, request.get(challenge_key))
    if server.client_went_away(request, exc):  # before is_unavailable: a reset is an OSError too
        return server.client_aborted(request, exc)
    if is_unavailable(exc):
        # A read or a non-ledger write could not reach the database: nothing was done.
        outage.failed(exc)
        return domain_error_response(Unavailable(), request_id)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return exc  # a redirect is a response
        return http_error_response(exc, request_id)
    log.exception("http.unhandled", path=request.path)
    return error_response(500, "internal_error", "internal error", request_id)


def add_routes(app: web.Application) -> None:
    documented = []
    for table in ROUTE_TABLES:
        for spec, func in table.entries:
            # The route name (unique per router) is the operationId.
            app.router.add_route(spec.method, spec.path, endpoint.wrap(spec, func), name=func.__name__)
            documented.append((spec, func.__name__))
    meta.serve_document(app, openapi.document(documented))


def release_memory(ledger: PgLedger, tokens: TokenIssuer) -> None:
    """Every actor has retired: forget the per-wallet caches and return freed heap to the OS
    (glibc keeps freed arenas otherwise), so RSS falls back once a burst of wallets goes idle."""
    ledger.forget()
    tokens.forget()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    log.info("memory.released")


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()


async def pool_ctx(app: web.Application):
    settings = app[settings_key]
    try:
        pool = await create_pool(app[database_url_key], settings.pool_size,
                                 acquire_timeout=settings.db_acquire_timeout,
                                 connect_timeout=settings.db_connect_timeout)
    except UNAVAILABLE as exc:
        raise StartupError(f"database unreachable at start: {type(exc).__name__}: {exc}") from None
    app[pool_key] = pool
    try:
        yield
    finally:
        await pool.close()


async def history_pool_ctx(app: web.Application):
    """History pages may be read from a standby (WALLETD_READ_DATABASE_URL); everything that
    decides (balances, money, ownership) stays on the primary pool."""
    settings = app[settings_key]
    if not settings.read_database_url:
        app[history_pool_key] = app[pool_key]
        yield
        return
    try:
        pool = await create_pool(settings.read_database_url, max(2, settings.pool_size // 2),
                                 acquire_timeout=settings.db_acquire_timeout,
                                 connect_timeout=settings.db_connect_timeout)
    except UNAVAILABLE as exc:
        raise StartupError(f"read database unreachable at start: {type(exc).__name__}: {exc}") from None
    app[history_pool_key] = pool
    try:
        yield
    finally:
        await pool.close()


async def actors_ctx(app: web.Application):
    """Ledger, group committer and actors; on shutdown the actors drain what they accepted while
    the pool (an earlier context) is still open."""
    settings = app[settings_key]
    ledger = PgLedger(app[pool_key], settings.rates_max_age, in_doubt_seconds=settings.in_doubt_seconds)
    app[ledger_key] = ledger
    committer = GroupCommitter(ledger, workers=settings.committers, max_batch=settings.max_batch)
    registry = ActorRegistry(committer, mailbox_size=settings.mailbox_size,
                             idle_seconds=settings.actor_idle_seconds, max_batch=settings.max_batch,
                             on_idle=lambda: release_memory(ledger, app[tokens_key]))
    app[registry_key] = registry
    committer.start()
    try:
        yield
    finally:
        await registry.close()


async def http_client_ctx(app: web.Application):
    app[http_key] = aiohttp.ClientSession()
    try:
        yield
    finally:
        await app[http_key].close()


class StartupError(ConfigError):
    """walletd cannot start; the message says why."""


async def idempotency_sweep_ctx(app: web.Application):
    """Deletes expired idempotency keys in the background (walletd/persistence/retention.py);
    after pool_ctx, so it stops before the pool closes."""
    sweeper = IdempotencySweeper(app[pool_key], app[settings_key].idempotency_retention_seconds)
    task = start_supervised("idempotency_sweep", sweeper.run)
    try:
        yield
    finally:
        await stop_task(task, timeout=5)


async def events_ctx(app: web.Application):
    """Issue 11's background tasks: the pending-expiry sweep and webhook delivery (walletd/events/).
    After actors_ctx, so on shutdown they stop before the actors drain and the pool closes."""
    settings = app[settings_key]
    dispatcher = WebhookDispatcher(app[pool_key], concurrency=settings.webhook_concurrency,
                                   timeout=settings.webhook_timeout_seconds, backoff_base=settings.webhook_backoff_seconds,
                                   horizon=settings.webhook_horizon_seconds)
    sweeper = PendingExpirySweeper(app[pool_key], app[registry_key], settings.pending_ttl_seconds, dispatcher.wake)
    app[dispatcher_key] = dispatcher
    tasks = [start_supervised("pending_expiry", sweeper.run), start_supervised("webhook_delivery", dispatcher.run)]
    try:
        yield
    finally:
        for task in tasks:
            await stop_task(task, timeout=5)


def create_app(settings: Settings, database_url: str, jwt_secret: str) -> web.Application:
    app = web.Application(middlewares=[request_context, server.read_body_within(settings.body_timeout_seconds)],
                          client_max_size=settings.max_body_bytes)
    app[settings_key] = settings
    app[database_url_key] = database_url
    app[tokens_key] = TokenIssuer(jwt_secret, settings.token_ttl_seconds)
    app.cleanup_ctx.extend([pool_ctx, history_pool_ctx, actors_ctx, http_client_ctx, idempotency_sweep_ctx,
                            events_ctx, meta.metrics_ctx])
    identity.setup(app, settings)
    meta.setup(app)
    add_routes(app)
    return app
