"""A client that went away mid-request: told apart from a database failure, and answered with
a 499 nobody receives, logged at info as `http.client_aborted` (never as a 500)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import ContentLengthError

from walletd.logs import get_logger

log = get_logger("walletd.http")

# Raised by a body read when the client went away: request._cancel(ConnectionResetError) on
# connection loss, or ContentLengthError when the stream ended short of Content-Length.
CLIENT_GONE = (ConnectionResetError, ContentLengthError)
CLIENT_CLOSED_STATUS = 499  # nginx's "client closed request": nobody receives it, the log line shows it


def client_went_away(request: web.BaseRequest, exc: BaseException) -> bool:
    """exc is the client's disconnection, not (say) a database connection reset: the client's
    own transport is gone too."""
    transport = request.transport
    return isinstance(exc, CLIENT_GONE) and (transport is None or transport.is_closing())


def client_aborted(request: web.BaseRequest, exc: BaseException) -> web.Response:
    log.info("http.client_aborted", method=request.method, path=request.path, reason=type(exc).__name__)
    response = web.Response(status=CLIENT_CLOSED_STATUS)
    response.force_close()
    return response
