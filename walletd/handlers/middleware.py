"""The request middlewares: a request id, one canonical log line and metrics per request, every
failure rendered as the JSON error shape (nothing a client sends yields a 500), a route's own body
limit, and the body read whole within WALLETD_BODY_TIMEOUT_SECONDS before the handler runs."""

from __future__ import annotations

import asyncio
import os
import time

from aiohttp import web

from walletd import logs, metrics
from walletd.appkeys import breaker_key, challenge_key, load_key, principal_key, request_id_key, settings_key
from walletd.config import ConfigError
from walletd.domain.errors import DomainError, Unavailable
from walletd.handlers.disconnects import CLIENT_GONE, client_aborted, client_went_away
from walletd.handlers.errors import (
    domain_error_response,
    error_response,
    http_error_response,
)
from walletd.logs import get_logger
from walletd.persistence.failures import is_unavailable

log = get_logger("walletd.http")


class _RequestIds:
    """96 random bits per request id, so an id says nothing about how many requests anyone made;
    drawn from a buffer refilled once per few hundred ids (os.urandom is a system call each time)."""

    _IDS_PER_FILL = 340

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def __call__(self) -> str:
        if self._offset >= len(self._buffer):
            self._buffer, self._offset = os.urandom(12 * self._IDS_PER_FILL), 0
        chunk = self._buffer[self._offset:self._offset + 12]
        self._offset += 12
        return chunk.hex()


new_request_id = _RequestIds()


def client_request_id(request: web.Request) -> str | None:
    """The client's own X-Request-ID, kept beside walletd's when it is 1-64 printable ASCII characters."""
    incoming = request.headers.get("X-Request-ID")
    if incoming and len(incoming) <= 64 and incoming.isascii() and incoming.isprintable():
        return incoming
    return None


@web.middleware
async def request_context(request: web.Request, handler):
    """One canonical log line per request, with walletd's own request id (answered as X-Request-ID;
    a client's X-Request-ID goes beside it in the logs, never instead of it), and every failure
    rendered as {"status", "message", ...}: nothing a client sends yields a 500.

    Only the path is logged, never the query string: the original's clients send passwords in it.
    """
    request_id = new_request_id()
    request[request_id_key] = request_id
    theirs = client_request_id(request)
    if theirs is None:
        logs.bind_request(request_id=request_id)
    else:
        logs.bind_request(request_id=request_id, client_request_id=theirs)
    started = time.perf_counter()
    load = request.app[load_key]
    load.in_flight += 1
    try:
        response = await handler(request)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
        response = error_for(exc, request)
    finally:
        load.in_flight -= 1
    response.headers["X-Request-ID"] = request_id
    response.headers["Server"] = "walletd"  # no versions: they only help an attacker pick an exploit
    route = request.match_info.route.resource
    template = route.canonical if route is not None else None
    elapsed = time.perf_counter() - started
    metrics.observe_request(request.method, template, response.status, elapsed)
    log.info("http.request", method=request.method, path=request.path, route=template, status=response.status,
             duration_ms=round(elapsed * 1000, 2), principal=request.get(principal_key), client=request.remote)
    return response


def route_body_limit(request: web.Request) -> None:
    """A route that declares a larger body (a multi-leg transfer: endpoint.Endpoint.max_body_bytes)
    may read up to that; every other route keeps WALLETD_MAX_BODY_BYTES. Called by read_body_within
    before it reads: one middleware less per request."""
    limit_of = getattr(request.match_info.handler, "max_body_bytes", None)
    if limit_of is not None:
        # aiohttp's only public way is request.clone(client_max_size=…), and a clone would keep
        # what later handlers store on it (the principal) from this chain's canonical log line.
        request._client_max_size = limit_of(request.app[settings_key])


def error_for(exc: Exception, request: web.Request) -> web.StreamResponse:
    request_id = request.get(request_id_key)
    if isinstance(exc, DomainError):
        return domain_error_response(exc, request_id, request.get(challenge_key))
    if client_went_away(request, exc):  # before is_unavailable: a reset is an OSError too
        return client_aborted(request, exc)
    if is_unavailable(exc):
        # A read or a non-ledger write could not reach the database: nothing was done.
        request.app[breaker_key].failed(exc)
        return domain_error_response(Unavailable(), request_id)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return exc  # a redirect is a response
        return http_error_response(exc, request_id)
    log.exception("http.unhandled", path=request.path)
    return error_response(500, "internal_error", "internal error", request_id)


class BodyTimeout(web.HTTPRequestTimeout):
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(reason=f"request body not received within {seconds:g} s")


def read_body_within(seconds: float):
    """Middleware: the body is read whole, within `seconds`, before the handler runs."""
    if seconds <= 0:
        raise ConfigError(f"WALLETD_BODY_TIMEOUT_SECONDS must be positive, got {seconds}")

    @web.middleware
    async def read_body(request: web.Request, handler):
        route_body_limit(request)
        # A small body usually arrives with the head, already whole: then there is nothing to wait for.
        if request.body_exists and not request.content.is_eof():
            try:
                async with asyncio.timeout(seconds):
                    await request.read()  # kept by aiohttp: the handler's request.text() reads it again
            except TimeoutError:
                log.info("http.body_timeout", method=request.method, path=request.path, seconds=seconds)
                response = error_for(BodyTimeout(seconds), request)
                response.force_close()  # the rest of a slow body must never be parsed as a next request
                return response
            except CLIENT_GONE as exc:
                return client_aborted(request, exc)
        return await handler(request)

    return read_body
