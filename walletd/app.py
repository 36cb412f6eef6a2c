"""The composition root: builds the aiohttp app from its settings, wires resources
(walletd/resources.py), middlewares (handlers/middleware.py), routes and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from walletd import metrics
from walletd.appkeys import (
    breaker_key,
    database_url_key,
    keys_key,
    load_key,
    settings_key,
    targets_key,
    tokens_key,
)
from walletd.auth.tokens import TokenIssuer
from walletd.config import Settings, check_jwt_secret
from walletd.handlers import endpoint, identity, meta, openapi
from walletd.handlers.errors import catalogue
from walletd.handlers.middleware import read_body_within, request_context
from walletd.handlers.proxies import TrustedProxies
from walletd.handlers.routes import ROUTE_TABLES
from walletd.jobs.request_load import RequestLoad
from walletd.keys import ServerKeys
from walletd.persistence.breaker import DatabaseBreaker
from walletd.resources import (
    actors_ctx,
    history_pool_ctx,
    http_client_ctx,
    idempotency_sweep_ctx,
    journal_jobs_ctx,
    payment_service_jobs_ctx,
    pool_ctx,
)
from walletd.webhooks.targets import TargetPolicy


def add_routes(app: web.Application) -> None:
    documented = []
    for table in ROUTE_TABLES:
        for spec, func in table.entries:
            # The route name (unique per router) is the operationId.
            app.router.add_route(spec.method, spec.path, endpoint.wrap(spec, func), name=func.__name__)
            documented.append((spec, func.__name__))
    meta.serve_document(app, openapi.document(documented))


def create_app(settings: Settings, database_url: str, jwt_secret: str) -> web.Application:
    middlewares = [request_context, read_body_within(settings.body_timeout_seconds)]
    if settings.trusted_proxies:
        # First: every later middleware and handler sees the client's address as request.remote.
        middlewares.insert(0, TrustedProxies(settings.trusted_proxies).middleware())
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[settings_key] = settings
    app[database_url_key] = database_url
    app[breaker_key] = DatabaseBreaker()
    app[load_key] = RequestLoad()
    app[tokens_key] = TokenIssuer(check_jwt_secret(jwt_secret, "WALLETD_JWT_SECRET"), settings.token_ttl_seconds,
                                  settings.jwt_secret_previous)
    app[keys_key] = ServerKeys(settings.secrets_key)
    app[targets_key] = TargetPolicy.from_allow_list(settings.webhook_allow_hosts)
    app.cleanup_ctx.extend([pool_ctx, history_pool_ctx, actors_ctx, http_client_ctx, idempotency_sweep_ctx,
                            payment_service_jobs_ctx, journal_jobs_ctx, meta.metrics_ctx])
    identity.setup(app, settings)
    meta.setup(app)
    metrics.know_error_codes(code for code, _, _ in catalogue())
    add_routes(app)
    return app
