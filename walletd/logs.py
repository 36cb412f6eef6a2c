"""structlog JSON lines on stdout: the audit trail. Request context lives in contextvars."""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Never let a credential reach a log line, whatever a caller passes by mistake.
_SECRET_KEYS = {"password", "token", "access_token", "authorization", "secret", "operator_key"}
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


# Free text (a traceback, a library's message) may quote a request: header lines, a query string,
# a repr of a dict. Each pattern keeps the name and drops the value.
_CREDENTIAL_TEXT = (
    (_JWT, "[jwt]"),
    (re.compile(r"(?i)\b(basic|bearer)(\s+|%20|\+)[^\s'\"&,;\\]+"), r"\1\2[redacted]"),
    (re.compile(r"(?i)\b(password|passwd|secret|token|access_token|authorization|x-operator-key|operator_key"
                r"|idempotency-key)\b(['\"]?\s*[:=]\s*['\"]?)(?!(?:basic|bearer)\b)([^\s'\"&,;\\]+)"),
     r"\1\2[redacted]"),
    (re.compile(r"whsec_[\w-]+"), "whsec_[redacted]"),
)
_FREE_TEXT_KEYS = ("exception", "stack")


def redact_text(text: str) -> str:
    for pattern, replacement in _CREDENTIAL_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if key in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str) and "eyJ" in value:
            event[key] = _JWT.sub("[jwt]", value)
    return event


def _redact_tracebacks(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """After format_exc_info: a traceback's text quotes what the failing code held."""
    for key in _FREE_TEXT_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = redact_text(value)
    return event


def _redact_foreign(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A stdlib logger's line (aiohttp, asyncio, asyncpg): its message is free text too."""
    if isinstance(event.get("event"), str):
        event["event"] = redact_text(event["event"])
    return _redact_tracebacks(logger, name, event)


def _dumps(event: dict, **_) -> str:
    # orjson: several times faster than json.dumps on the per-request line; str() for Decimal.
    return orjson.dumps(event, default=str).decode()


class LineBuffer:
    """A structlog logger that writes its lines in one system call per `interval` (or per
    `limit` characters) instead of one per line: at thousands of requests a second, a write and
    flush per line cost walletd about a quarter of its throughput. On a hard kill the last
    `interval` of lines may be lost; the journal, whose entries carry the request id, is the
    durable record. Flushed at exit."""

    def __init__(self, stream, interval: float = 0.05, limit: int = 1 << 16) -> None:
        self.stream, self.interval, self.limit = stream, interval, limit
        self._parts: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        self._parts.append(message)
        self._size += len(message) + 1
        if self._size >= self.limit:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:  # no event loop (start-up, CLI): write now
                self.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._parts:
            text = "\n".join(self._parts) + "\n"
            self._parts, self._size = [], 0
            self.stream.write(text)
            self.stream.flush()


class _StdlibToSink(logging.Handler):
    """Lines from stdlib loggers (aiohttp, asyncpg, warnings) rendered as the same JSON and
    written through the same sink, so the stream never carries a line of another shape."""

    def __init__(self, sink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure(level: str = "info", stream=None, *, buffered: bool = True) -> None:
    """JSON lines to `stream` (stdout); `buffered=False` writes each line at once (tests)."""
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}")
    out = stream or sys.stdout
    factory: Callable[..., Any]
    sink: Callable[[str], None]
    if buffered:
        buffer = LineBuffer(out)
        factory = lambda *_: buffer  # noqa: E731 - one shared buffer keeps lines in order
        sink = buffer.msg
    else:
        factory = structlog.PrintLoggerFactory(out)

        def sink(line: str) -> None:
            out.write(line + "\n")
            out.flush()
    handler = _StdlibToSink(sink)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(serializer=_dumps)],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True), _redact,
                           structlog.processors.format_exc_info, _redact_foreign],
    ))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    logging.captureWarnings(True)
    # asyncpg retries its connection floor while the database is down and logs a traceback per
    # try; walletd reports the outage itself once (db.unavailable / db.recovered).
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            _redact_tracebacks,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str):
    return structlog.get_logger(name)
