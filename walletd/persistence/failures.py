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

import asyncpg

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
