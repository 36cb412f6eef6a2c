"""The app's resources, one cleanup_ctx generator each: create, store, yield, close.

aiohttp starts them in the order create_app lists them and closes them in reverse: the pool
first and last, the actors after it (on shutdown they drain what they accepted while the pool is
still open), background sweeps and deliveries after the actors (they stop first). A failure
while starting one closes those already started.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from walletd.actors.committer import GroupCommitter
from walletd.actors.registry import ActorRegistry
from walletd.appkeys import (
    breaker_key,
    database_url_key,
    dispatcher_key,
    history_pool_key,
    http_key,
    keys_key,
    ledger_key,
    load_key,
    pool_key,
    registry_key,
    settings_key,
    targets_key,
    tokens_key,
)
from walletd.config import ConfigError
from walletd.handlers.errors import error_body
from walletd.jobs.idempotency_sweep import IdempotencySweeper
from walletd.jobs.journal_sealer import JournalSealer
from walletd.jobs.self_audit import SelfAudit
from walletd.jobs.stale_sweep import StalePendingSweeper
from walletd.jobs.supervision import start_supervised, stop_task
from walletd.jobs.webhook_delivery import WebhookDispatcher
from walletd.memory import release_memory
from walletd.persistence.citus.ledger import CitusLedger
from walletd.persistence.db import create_pool
from walletd.persistence.failures import UNAVAILABLE
from walletd.persistence.ledger import PgLedger


async def _open_pool(settings, url: str, size: int, what: str):
    try:
        return await create_pool(url, size, acquire_timeout=settings.db_acquire_timeout,
                                 connect_timeout=settings.db_connect_timeout)
    except UNAVAILABLE as exc:
        raise StartupError(f"{what} unreachable at start: {type(exc).__name__}: {exc}") from None


async def pool_ctx(app: web.Application):
    settings = app[settings_key]
    pool = await _open_pool(settings, app[database_url_key], settings.pool_size, "database")
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
    pool = await _open_pool(settings, settings.read_database_url, max(2, settings.pool_size // 2), "read database")
    app[history_pool_key] = pool
    try:
        yield
    finally:
        await pool.close()


async def actors_ctx(app: web.Application):
    """Ledger, group committer and actors; on shutdown the actors drain what they accepted while
    the pool (an earlier context) is still open."""
    settings = app[settings_key]
    breaker = app[breaker_key]
    # A refusal remembered under an Idempotency-Key is stored as the answer the edge gives.
    edition = CitusLedger if app[pool_key].distributed else PgLedger
    ledger = edition(app[pool_key], breaker, settings.rates_max_age, refusal_response=error_body,
                     in_doubt_seconds=settings.in_doubt_seconds)
    app[ledger_key] = ledger
    committer = GroupCommitter(ledger, workers=settings.committers, max_batch=settings.max_batch)
    registry = ActorRegistry(committer, mailbox_size=settings.mailbox_size,
                             idle_seconds=settings.actor_idle_seconds, max_batch=settings.max_batch,
                             on_idle=lambda: release_memory(ledger, app[tokens_key]), admit=breaker.admit)
    app[registry_key] = registry
    committer.start()
    stop_shedding = breaker.while_open(committer.shed)
    try:
        yield
    finally:
        stop_shedding()
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
    """Deletes expired idempotency keys in the background (walletd/jobs/idempotency_sweep.py);
    after pool_ctx, so it stops before the pool closes."""
    sweeper = IdempotencySweeper(app[pool_key], app[settings_key].idempotency_retention_seconds)
    task = start_supervised("idempotency_sweep", sweeper.run, breaker=app[breaker_key])
    try:
        yield
    finally:
        await stop_task(task, timeout=5)


async def payment_service_jobs_ctx(app: web.Application):
    """The payment service's jobs: the stale sweep and webhook delivery (walletd/jobs/).
    After actors_ctx, so on shutdown they stop before the actors drain and the pool closes."""
    settings = app[settings_key]
    dispatcher = WebhookDispatcher(app[pool_key], app[keys_key], app[targets_key],
                                   concurrency=settings.webhook_concurrency,
                                   timeout=settings.webhook_timeout_seconds,
                                   backoff_base=settings.webhook_backoff_seconds,
                                   horizon=settings.webhook_horizon_seconds)
    sweeper = StalePendingSweeper(app[pool_key], settings.pending_ttl_seconds, dispatcher.wake)
    app[dispatcher_key] = dispatcher
    breaker = app[breaker_key]
    tasks = [start_supervised("pending_stale", sweeper.run, breaker=breaker),
             start_supervised("webhook_delivery", dispatcher.run, breaker=breaker)]
    try:
        yield
    finally:
        for task in tasks:
            await stop_task(task, timeout=5)


async def journal_jobs_ctx(app: web.Application):
    """The journal's jobs: the sealer and the self-audit (walletd/jobs/); after pool_ctx, so they stop
    before the pool closes."""
    settings = app[settings_key]
    sealer = JournalSealer(app[pool_key], settings.seal_interval_seconds, settings.head_log_interval_seconds)
    audit = SelfAudit(app[pool_key], settings.audit_interval_seconds, settings.audit_full_interval_seconds,
                      load=app[load_key], max_wait=settings.audit_max_wait_seconds)
    breaker = app[breaker_key]
    tasks = [start_supervised("journal_sealer", sealer.run, breaker=breaker),
             start_supervised("self_audit", audit.run, breaker=breaker)]
    try:
        yield
    finally:
        for task in tasks:
            await stop_task(task, timeout=5)
