"""The HTTP runner: what `walletd serve` listens with, the connection cap, and the answer to what
the HTTP parser refuses (docs/configuration.md describes every protection against slow and
vanished clients, some of them request middlewares in handlers/middleware.py).

What aiohttp offers and walletd uses:
- `keepalive_timeout` is the header timeout. aiohttp arms it when a connection opens and again
  after each response, and closes the connection if no complete request head has arrived when it
  fires (a request being handled is never cut). So a slow-header client (slowloris) and an idle
  keep-alive connection both go after WALLETD_HEADER_TIMEOUT_SECONDS.
- `max_line_size` / `max_field_size` / `max_headers` (8190 / 8192 / 128) bound the head's size;
  `client_max_size` (WALLETD_MAX_BODY_BYTES) bounds the body.

What aiohttp lacks and walletd adds:
- a body timeout (handlers/middleware.py, `read_body_within`): the whole body (at most
  WALLETD_MAX_BODY_BYTES) is read before the handler runs, within WALLETD_BODY_TIMEOUT_SECONDS,
  else 408 and the connection closes; a client that disconnects mid-body is logged at info as
  `http.client_aborted`, never as a 500 (handlers/disconnects.py);
- here, a connection cap: `ConnectionCap` answers connections beyond WALLETD_MAX_CONNECTIONS (per
  process) with a canned 503 + Retry-After and closes them, before any byte is parsed;
- requests the HTTP parser refuses (`JsonParseErrors`): a JSON error with a `code` (414 for an
  over-long request line, 431 for an over-long header or too many, 400 for anything else), one
  info line `http.unparsable` naming the kind of error only, never the traceback aiohttp logs at
  error level, which quotes the offending bytes (a password in a query string, a token in a
  header) and lets anyone fill the log.

Left to the reverse proxy: TLS, a per-address connection cap and request rate (connections come
from the proxy; only the request, through WALLETD_TRUSTED_PROXIES, learns the client's address),
and slow readers of responses (walletd's responses are small and are written to the kernel's
socket buffer at once).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from walletd import metrics
from walletd.config import ConfigError, Settings
from walletd.handlers.errors import error_response
from walletd.handlers.middleware import new_request_id
from walletd.logs import get_logger

log = get_logger("walletd.http")

_REFUSAL_BODY = b'{"status": 503, "message": "too many connections, retry later", "code": "too_many_connections"}'
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY))


class _Refusal(asyncio.Protocol):
    """Answers the canned 503 and half-closes; closes once the client does (at most a second later).
    Closing at once with the client's request unread would reset the connection and lose the 503."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(_REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(1.0, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: it is refused whatever it says

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc) -> None:
        self._timer.cancel()


# The request line and a header line get different limits, so a LineTooLong says which it was
# (aiohttp's exception does not, except by the limit it quotes).
MAX_REQUEST_LINE = 8190
MAX_HEADER_LINE = 8192
_TOO_MANY_HEADERS = "Too many headers received"


def unparsable(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for a request the parser refused."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_REQUEST_LINE,):
            return 414, "uri_too_long", f"request line longer than {MAX_REQUEST_LINE} bytes"
        return 431, "header_too_large", f"a header line is longer than {MAX_HEADER_LINE} bytes"
    if isinstance(exc, HttpProcessingError) and exc.message == _TOO_MANY_HEADERS:
        return 431, "header_too_large", "too many header lines"
    return 400, "bad_request", "the request is not valid HTTP/1.1"


class JsonParseErrors(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses in walletd's JSON error
    shape. Other errors (none reach here: the request middleware renders every handler failure)
    keep aiohttp's handling."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        status, code, text = unparsable(exc)
        request_id = new_request_id()
        log.info("http.unparsable", status=status, code=code, error=type(exc).__name__, request_id=request_id)
        response = error_response(status, code, text, request_id, {"Server": "walletd", "X-Request-ID": request_id})
        response.force_close()
        return response


class ConnectionCap:
    """Protocol factory: aiohttp's server for the first `limit` open connections, a canned 503 beyond.

    Counted from aiohttp's own connection table, so a connection counts until its handler ends.
    Connections accepted in the same loop iteration are counted once they start, so a burst can
    overshoot by at most the listen backlog.
    """

    def __init__(self, server: web.Server, limit: int, options: dict | None = None) -> None:
        if limit < 1:
            raise ConfigError(f"WALLETD_MAX_CONNECTIONS must be at least 1, got {limit}")
        self.server, self.limit = server, limit
        self.options = options or {}  # the connection handler's options (runner_options)
        self.refused = 0
        self._reported = 0
        self._next_report = 0.0

    def __call__(self) -> asyncio.Protocol:
        if len(self.server.connections) < self.limit:
            return JsonParseErrors(self.server, loop=asyncio.get_running_loop(), **self.options)
        self.refused += 1
        metrics.answered_error("too_many_connections")
        now = time.monotonic()
        if now >= self._next_report:  # one warning per second at most, with the count since the last
            log.warning("http.connections_capped", limit=self.limit, refused=self.refused - self._reported)
            self._reported, self._next_report = self.refused, now + 1.0
        return _Refusal()


def runner_options(settings: Settings) -> dict:
    """Keyword arguments for web.AppRunner (also usable as a TestServer's server_kwargs)."""
    if settings.header_timeout_seconds <= 0:
        raise ConfigError(f"WALLETD_HEADER_TIMEOUT_SECONDS must be positive, got {settings.header_timeout_seconds}")
    # lingering_time: after an early answer (413, 408) aiohttp discards the unread rest of the body so
    # the client can read the answer; 2 s rather than its default 10 s, or a slow body is held longer.
    return {"access_log": None, "keepalive_timeout": settings.header_timeout_seconds, "lingering_time": 2.0,
            "max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_HEADER_LINE}


async def serve(app: web.Application, settings: Settings, host: str, port: int, *, reuse_port: bool,
                shutdown_timeout: float = 30, backlog: int = 128,
                on_listening: Callable[[str], object] | None = None) -> None:
    """Listen until SIGINT/SIGTERM, then stop accepting, let requests in progress finish (at most
    shutdown_timeout) and run the app's cleanup (actors drain before the pool closes)."""
    options = runner_options(settings)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    listener = None
    try:
        await runner.setup()  # inside the try: a start-up that fails half-way is cleaned up too
        assert runner.server is not None
        listener = await loop.create_server(ConnectionCap(runner.server, settings.max_connections, options), host, port,
                                            backlog=backlog, reuse_address=True, reuse_port=reuse_port or None)
        if on_listening is not None:
            on_listening(f"listening on http://{host}:{port}")
        await stop.wait()
    finally:
        if listener is not None:
            listener.close()
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run(app: web.Application, settings: Settings, host: str, port: int, *, reuse_port: bool,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        on_listening: Callable[[str], object] | None = None) -> None:
    runner_options(settings)  # a nonsense setting stops us here, before anything starts
    if settings.max_connections < 1:
        raise ConfigError(f"WALLETD_MAX_CONNECTIONS must be at least 1, got {settings.max_connections}")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(app, settings, host, port, reuse_port=reuse_port, on_listening=on_listening))
