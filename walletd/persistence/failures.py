"""What a database failure means for the answer: the only place that reads driver exceptions.

Three outcomes, and the rest of walletd sees only domain errors:
- unavailable: the database could not be reached, refused to work (starting up, shutting down,
  read-only standby after a failover, too many connections) or the connection broke before any
  write was sent. Certainly nothing moved: 503 + Retry-After.
- in doubt: a write (the fast path's one statement, or the locked path's COMMIT) was sent and no
  answer came back. Only a lookup on the database can tell; see PgLedger.
- anything else is a statement the server refused: it rolled back, nothing moved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from walletd.logs import get_logger

log = get_logger("walletd.db")

# Errors that mean "the database is not there for us right now", wherever they are raised.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is an OSError)
    TimeoutError,  # connect or pool-acquire deadline
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, crash shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.ReadOnlySQLTransactionError,  # a standby after failover
    asyncpg.InterfaceError,  # the connection is closed or was lost
    asyncpg.InternalClientError,  # includes target_session_attrs finding no writable host
)


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE)


def server_refused(exc: BaseException) -> bool:
    """The server answered the statement with an error and kept the session: the statement (and
    its implicit or explicit transaction) did not commit. FATAL and PANIC end the session, and a
    backend terminated while waiting for a synchronous standby has already committed locally,
    so those stay in doubt. Connection errors (class 08) the driver raises when the connection
    goes carry no severity; one the server sends at ERROR is a refusal like any other: a Citus
    coordinator that cannot reach a worker (every walletd write there commits with two-phase
    commit, so an error means nothing committed; see persistence/citus/write_batch.sql)."""
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
    return severity == "ERROR"


class OutageLog:
    """One warning when the database goes away and one line when it is back, instead of a
    traceback per request."""

    # While the database has been unreachable for FAIL_FAST_AFTER seconds, new money commands
    # are refused at once (503, nothing moved) instead of queueing behind batches that are
    # still finding out what happened to their commits; one command per PROBE_EVERY goes
    # through to notice the recovery (and /ready probes too). Listeners (the group committer)
    # are told once the outage has lasted that long, and every PROBE_EVERY while it lasts, so
    # they can refuse what they hold but never sent.
    FAIL_FAST_AFTER = 1.0
    PROBE_EVERY = 0.5

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0
        self._last_probe = 0.0
        self._listeners: set[Callable[[], None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def on_lasting(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call listener while an outage lasts; returns the function that unregisters it."""
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a CLI command): nobody to tell
            return
        if self._timer is None:
            self._timer = loop.call_later(delay, self._lasting)

    def _lasting(self) -> None:
        self._timer = None
        if self.since is None:
            return
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - one listener's bug must not stop the others
                log.exception("db.outage_listener_failed")
        self._schedule(self.PROBE_EVERY)

    def admit(self) -> bool:
        if self.since is None:
            return True
        now = time.monotonic()
        if now - self.since < self.FAIL_FAST_AFTER or now - self._last_probe >= self.PROBE_EVERY:
            self._last_probe = now
            return True
        self.failures += 1
        return False

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("db.unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            self._schedule(self.FAIL_FAST_AFTER)

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning("db.recovered", seconds=round(time.monotonic() - self.since, 2), failed_requests=self.failures)
            self.since, self.failures = None, 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    @property
    def down(self) -> bool:
        return self.since is not None


outage = OutageLog()
