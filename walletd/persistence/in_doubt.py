"""In-doubt writes: a write was sent and its answer never came, so it may or may not have committed.

walletd generates every id it writes (UUIDv7), so one row the batch wrote (its marker) tells the
whole batch's outcome: the batch is one transaction. Before looking the marker up, the old
backend is stopped if it still runs (the client side of a connection can die first), so the
lookup sees the final outcome; a marker found is then waited on until a synchronous standby
has it too. PgLedger._resolve drives these with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from walletd.domain.ledger import Effects
from walletd.persistence.db import FairPool


class InDoubt(Exception):
    """A write was sent and its answer never came: it may or may not have committed."""

    def __init__(self, backend: tuple[int, datetime | None], cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.backend = backend
        self.cause = cause
        self.outcome: tuple[list[object], Effects] | None = None  # what the batch answers if committed


def backend_of(pool: FairPool, conn) -> tuple[int, datetime | None]:
    """The connection's server process: its pid and start time (a pid alone can be reused)."""
    pid = conn.get_server_pid()
    return pid, pool.backends.get(pid)


def marker(fx: Effects) -> tuple:
    """One row the batch wrote: its presence is the whole batch's outcome. Every id is walletd's
    own, so nothing else can have it."""
    if fx.entries:
        return ("entry", fx.entries[0][0])
    if fx.new_transactions:
        return ("transaction", fx.new_transactions[0]["id"])
    # Only status changes (e.g. deposits rejected): the row with this status at this batch's instant.
    transaction_id, status = fx.status_updates[0][:2]
    return ("settled", transaction_id, status, fx.now)


async def was_written(conn, found: tuple) -> bool:
    if found[0] == "entry":
        return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM journal_entries WHERE id = $1)", found[1])
    if found[0] == "transaction":
        return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM transactions WHERE id = $1)", found[1])
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM transactions WHERE id = $1 AND status = $2 AND updated_at = $3)", *found[1:])


async def wait_for_standby(conn, deadline: float) -> None:
    """A commit is visible on the primary before its synchronous standby confirms it (and
    terminating its backend ends that wait), so finding it is not yet knowing it survives a
    failover. A transaction that writes WAL commits after it and returns only once the standby
    has flushed it, and so everything before it. A row lock is the smallest such write (a
    transaction with only an xid commits without waiting); FOR KEY SHARE blocks nobody who
    reads or updates currencies. Without a standby it is an ordinary commit.
    (tests/ha/sync_gap.py: without this wait, an acknowledged transfer was lost.)"""
    await conn.execute("SELECT 1 FROM currencies ORDER BY id LIMIT 1 FOR KEY SHARE",
                       timeout=max(0.1, deadline - time.monotonic()))


async def stop_backend(conn, backend: tuple[int, datetime | None], deadline: float) -> None:
    """The old connection's server process may still be running the write: terminate it and wait
    until it is gone, so the lookup that follows sees the final outcome. After a failover it is
    not on this server at all."""
    pid, started = backend
    if started is None:
        return
    while await conn.fetchval(
            "SELECT pg_terminate_backend(pid, 1000) IS NOT NULL FROM pg_stat_activity "
            "WHERE pid = $1 AND backend_start = $2", pid, started):
        if time.monotonic() >= deadline:
            raise TimeoutError("the in-doubt backend did not stop")
        await asyncio.sleep(0.05)
