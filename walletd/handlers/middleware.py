"""The request middleware: a request id, one canonical log line and metrics per request, and every
failure rendered as the JSON error shape (nothing a client sends yields a 500)."""

from __future__ import annotations

import itertools
import os
import time

import structlog
from aiohttp import web

from walletd import metrics, server
from walletd.appkeys import principal_key, request_id_key, settings_key
from walletd.domain.errors import DomainError, Unavailable
from walletd.handlers.errors import (
    challenge_key,
    domain_error_response,
    error_response,
    http_error_response,
)
from walletd.logs import get_logger
from walletd.persistence.failures import is_unavailable, outage

log = get_logger("walletd.http")


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


@web.middleware
async def route_body_limit(request: web.Request, handler):
    """A route that declares a larger body (a multi-leg transfer: endpoint.Endpoint.max_body_bytes)
    may read up to that; every other route keeps WALLETD_MAX_BODY_BYTES. Runs before the body is
    read (server.read_body_within)."""
    limit_of = getattr(request.match_info.handler, "max_body_bytes", None)
    if limit_of is not None:
        # aiohttp's only public way is request.clone(client_max_size=…), and a clone would keep
        # what later handlers store on it (the principal) from this chain's canonical log line.
        request._client_max_size = limit_of(request.app[settings_key])
    return await handler(request)


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
