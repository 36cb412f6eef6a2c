"""structlog JSON lines on stdout: the audit trail. The request's own fields (its id) live in a
context variable (`bind_request`), so every line logged while handling it carries them."""

from __future__ import annotations

import atexit
import collections
import contextvars
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


# The fields of the request being handled (request_id, client_request_id): one variable holding
# one dict, set once per request, so a line costs one lookup to carry them.
_request_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("walletd_log_request",
                                                                                        default=None)


def bind_request(**fields: Any) -> None:
    """The fields every line logged from here on in this context carries (they replace earlier ones)."""
    _request_fields.set(fields)


_stamp: tuple[int, str] = (-1, "")  # (second, its ISO text): formatted once per second


def _timestamp() -> str:
    """Now in UTC, ISO 8601 with microseconds and a Z (2026-01-02T03:04:05.123456Z)."""
    global _stamp
    now = time.time()
    second = int(now)
    stamp = _stamp
    if stamp[0] != second:
        stamp = _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{stamp[1]}.{int((now - second) * 1_000_000):06d}Z"


def _add_timestamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["timestamp"] = _timestamp()
    return event


_LEVEL_OF = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level names them


def _render(logger: Any, method_name: str, event: MutableMapping[str, Any]) -> str:
    """walletd's own lines, one processor: the request's fields, level, time, redaction, JSON.

    What it does is what merge_contextvars, add_log_level, TimeStamper, _redact, format_exc_info,
    _redact_tracebacks and the JSON renderer did in a chain, in one pass: a request logs two or
    three lines, and the chain cost a fifth of a transfer's CPU. A token is looked for in the
    rendered line (one substring search), so a clean line, nearly every one, is never walked
    value by value; a token anywhere in it, nested values included, is replaced there."""
    fields = _request_fields.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    event["level"] = _LEVEL_OF.get(method_name, method_name)
    event["timestamp"] = _timestamp()
    if not _SECRET_KEYS.isdisjoint(event):
        for key in _SECRET_KEYS.intersection(event):
            event[key] = "[redacted]"
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(logger, method_name, event)
    if "exception" in event or "stack" in event:
        event = _redact_tracebacks(logger, method_name, event)
    line = orjson.dumps(event, default=str).decode()
    # A token's characters are never escaped in JSON, so the pattern finds it in the line as in the value.
    return _JWT.sub("[jwt]", line) if "eyJ" in line else line


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


def configure(level: str = "info", stream=None, *, buffered: bool = True, writer=None) -> None:
    """JSON lines to `stream` (stdout); `buffered=False` writes each line at once (tests); `writer`
    (anything with msg(line), as LineBuffer) writes them instead (bench/log_flush.py compares writers)."""
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}")
    out = stream or sys.stdout
    factory: Callable[..., Any]
    sink: Callable[[str], None]
    if writer is not None:
        factory = lambda *_: writer  # noqa: E731
        sink = writer.msg
    elif buffered:
        buffer = LineBuffer(out)
        factory = lambda *_: buffer  # noqa: E731 - one shared buffer keeps lines in order
        sink = buffer.msg
    else:
        factory = structlog.PrintLoggerFactory(out)

        def sink(line: str) -> None:
            out.write(line + "\n")
            out.flush()
    _output.sink, _output.threshold = sink, _LEVELS[level]
    handler = _StdlibToSink(sink)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(serializer=_dumps)],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           _add_timestamp, _redact,
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
        processors=[_render],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Output:
    """Where lines go and the lowest level written: configure() sets both."""

    __slots__ = ("sink", "threshold")

    def __init__(self) -> None:
        self.sink: Callable[[str], None] = _print_line
        self.threshold = logging.DEBUG


_output = _Output()


class Logger:
    """A named logger: each call renders one JSON line (`_render`) and hands it to the sink configure()
    chose, below its level nothing at all. The same lines structlog's filtering BoundLogger gave,
    without its lazy proxy, context copy and processor loop, about half of a line's cost on the
    request path; structlog still renders tracebacks and every stdlib logger's lines."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _line(self, method: str, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        _output.sink(_render(self, method, fields))

    def debug(self, event: str, **fields: Any) -> None:
        if _output.threshold <= logging.DEBUG:
            self._line("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if _output.threshold <= logging.INFO:
            self._line("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if _output.threshold <= logging.WARNING:
            self._line("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        if _output.threshold <= logging.ERROR:
            self._line("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """error(), with the exception being handled as `exception` (its traceback, redacted)."""
        if _output.threshold <= logging.ERROR:
            fields.setdefault("exc_info", True)
            self._line("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._line("critical", event, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)
