"""structlog JSON lines on stdout: the audit trail. Request context lives in contextvars."""

from __future__ import annotations

import atexit
import collections
import logging
import re
import sys
import threading
import time
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
    """A structlog logger that writes its lines in one system call per `interval` (25 ms) instead
    of one per line: at thousands of requests a second, a write and flush per line cost walletd
    about a quarter of its throughput.

    How soon a line reaches the stream depends on no event loop: not on which loop runs (a timer
    set on a loop that has since closed never fires) nor on how busy it is. A writer thread of
    its own, woken by the first line after a write, writes what gathered `interval` later; and
    a line logged when the oldest unwritten one is already `interval` old writes them at once
    from the caller's thread, so under traffic the lines do not wait for the writer's turn on a
    busy machine either. The caller otherwise only appends to a deque (atomic, no lock).
    Everything left is written at exit (SIGTERM ends walletd through its normal shutdown, so
    that includes SIGTERM); a SIGKILL loses at most the last `interval` of lines.
    """

    def __init__(self, stream, interval: float = 0.025) -> None:
        self.stream, self.interval = stream, interval
        self._lines: collections.deque[str] = collections.deque()
        self._oldest: float | None = None  # when the oldest line not yet written was logged
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # the writer thread, a caller and the exit: one at a time
        self._writer = threading.Thread(target=self._write_forever, name="walletd-log-writer", daemon=True)
        self._writer.start()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        self._lines.append(message)
        # Appended before the check: a writer that has already cleared `_oldest` is woken again;
        # one that has not drains after this append and takes the line.
        oldest = self._oldest
        if oldest is None:
            self._oldest = time.monotonic()
            self._wake.set()
        elif time.monotonic() - oldest >= self.interval:
            self.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def _write_forever(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.interval)  # gather what arrives meanwhile into one write
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            self._oldest = None
            lines = self._lines
            parts = [lines.popleft() for _ in range(len(lines))]
            if parts:
                try:
                    self.stream.write("\n".join(parts) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):  # a closed or broken stdout: nobody is left to read it
                    pass


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
