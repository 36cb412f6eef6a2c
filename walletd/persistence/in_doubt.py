"""In-doubt writes: a write was sent and its answer never came, so it may or may not have committed.

The step that commits (an autocommit statement, or COMMIT) is awaited through `await_commit`: a
refusal from the server means nothing was written; any other failure raises InDoubt, carrying
the connection's server process (db.Backend, which the connection got when it opened and keeps
until it is gone). `find_out` then stops that process if it still runs (the client side of a
connection can die first, and the backend may still be waiting on a row lock or on the standby),
so the lookup that follows sees the final outcome, and looks up one row the write made: its
`Evidence`. walletd generates every id it writes, so nothing else can have it, and the write was
one transaction, so one row tells for all. Evidence found is waited on until a synchronous
standby has it too. Without a backend to stop, evidence not found proves nothing: the outcome
stays unknown, never "not committed". On Citus the write's parts on the workers are finished first
(persistence/citus/two_phase.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass

import asyncpg
import orjson

from walletd.domain.effects import Effects
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.citus.two_phase import finish_two_phase
from walletd.persistence.db import Backend, FairPool, discard
from walletd.persistence.failures import UNAVAILABLE, server_refused


class InDoubt(Exception):
    """A write was sent and its answer never came: it may or may not have committed."""

    def __init__(self, backend: Backend | None, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.backend = backend
        self.cause = cause
        self.outcome: object = None  # what the writer answers if it committed (the ledger's batch)


@dataclass(frozen=True)
class Evidence:
    """Evidence that a write committed: one row it made, and the query that finds it."""

    label: str  # for log lines (their `marker` field): the row's id
    query: str
    args: tuple


def backend_of(conn) -> Backend | None:
    return getattr(conn, "backend", None)


async def await_commit(conn, step: Awaitable[object]) -> None:
    """Await the step that commits. A refusal from the server means nothing was written (raised
    as is); any other failure, cancellation included, leaves the write in doubt (InDoubt)."""
    backend = backend_of(conn)  # before the step: a connection that is lost no longer tells
    try:
        await step
    except BaseException as exc:
        if server_refused(exc):
            raise
        discard(conn)
        raise InDoubt(backend, exc) from exc


@contextlib.asynccontextmanager
async def transaction(conn):
    """A transaction whose COMMIT goes through await_commit: whatever fails inside rolls it back
    (nothing is written before COMMIT); a COMMIT whose answer is lost raises InDoubt."""
    started = conn.transaction()
    await started.start()
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(Exception):  # a broken connection; the pool terminates it
                await started.rollback()
        raise
    await await_commit(conn, started.commit())


def batch_evidence(fx: Effects, idempotency_rows: list) -> Evidence:
    """The evidence of a ledger batch: a journal entry, else a transaction record, else a
    settlement's new status at the batch's instant, else (a batch that only remembered answers:
    a repeated settlement or a refusal under a fresh key) an Idempotency-Key row with exactly its
    request and response."""
    if fx.entries:
        entry_id = fx.entries[0][0]
        return Evidence(str(entry_id), "SELECT EXISTS (SELECT 1 FROM journal_entries WHERE id = $1)", (entry_id,))
    if fx.new_transactions:
        transaction_id = fx.new_transactions[0]["id"]
        return Evidence(str(transaction_id), "SELECT EXISTS (SELECT 1 FROM transactions WHERE id = $1)",
                      (transaction_id,))
    if fx.status_updates:
        transaction_id, status = fx.status_updates[0][:2]
        return Evidence(str(transaction_id), "SELECT EXISTS (SELECT 1 FROM transactions "
                      "WHERE id = $1 AND status = $2 AND updated_at = $3)", (transaction_id, status, fx.now))
    principal_id, key, request_hash, status_code, response = idempotency_rows[0]
    return Evidence(f"idempotency key {key!r}", "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE principal_id = $1 "
                  "AND key = $2 AND request_hash = $3 AND status_code = $4 AND response = $5::jsonb)",
                  (principal_id, key, request_hash, status_code, orjson.dumps(response, default=str).decode()))


def registration_evidence(user_id: uuid.UUID) -> Evidence:
    return Evidence(str(user_id), "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", (user_id,))


async def find_out(pool: FairPool, doubt: InDoubt, evidence: Evidence, seconds: float,
                   breaker: DatabaseBreaker) -> bool | None:
    """Whether the in-doubt write committed: True (and a synchronous standby has it), False
    (certainly not: its backend is gone and its evidence is not there), or None when that could
    not be established within `seconds` or its backend could not be stopped."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            async with pool.acquire(timeout=max(0.1, deadline - time.monotonic())) as conn:
                if doubt.backend is not None:
                    await stop_backend(conn, doubt.backend, deadline)
                    if pool.distributed:
                        await finish_two_phase(conn, doubt.backend.pid, deadline)
                committed = await conn.fetchval(evidence.query, *evidence.args)
                if committed:
                    await wait_for_standby(conn, deadline)
            break
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            breaker.failed(exc)
            if time.monotonic() + delay >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    breaker.succeeded()
    if not committed and doubt.backend is None:
        return None  # the old backend may still be running the write: not finding it proves nothing
    return bool(committed)


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


async def stop_backend(conn, backend: Backend, deadline: float) -> None:
    """The old connection's server process may still be running the write: terminate it and wait
    until it is gone, so the lookup that follows sees the final outcome. After a failover it is
    not on this server at all."""
    while await conn.fetchval(
            "SELECT pg_terminate_backend(pid, 1000) IS NOT NULL FROM pg_stat_activity "
            "WHERE pid = $1 AND backend_start = $2", backend.pid, backend.started):
        if time.monotonic() >= deadline:
            raise TimeoutError("the in-doubt backend did not stop")
        await asyncio.sleep(0.05)
