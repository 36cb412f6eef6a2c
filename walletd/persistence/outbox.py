"""The outbox's storage: webhook endpoints, the event feed, and delivery claims.

Events themselves are written by the ledger's batch write (walletd_write_batch), in the
transaction of the money change they report. This module reads them and keeps each delivery's
state: one row per (event, endpoint) in webhook_deliveries.

Claims are leases: `claim_due` picks due rows with FOR UPDATE SKIP LOCKED and, in the same
statement, counts the attempt and moves next_attempt_at past the attempt's timeout. Several
processes therefore never send one delivery at once, and a process that dies mid-attempt leaves
a row that becomes due again when the lease ends (at least once). The attempt number is the
fencing token: an outcome is recorded only if nobody claimed the row again meanwhile.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from walletd.persistence.db import FairPool

MAX_ENDPOINTS = 16  # per service user: bounds the fan-out of every event


@dataclass(frozen=True)
class Delivery:
    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    attempt: int
    url: str
    secret: str
    body: str
    created_at: datetime  # when the event was written: latency and the give-up horizon count from it


async def create_endpoint(pool: FairPool, endpoint_id: uuid.UUID, service_user_id: uuid.UUID, url: str,
                          secret: str) -> dict | None:
    """None when the service user already has MAX_ENDPOINTS (checked in the insert itself)."""
    # The count as a CTE: Citus plans an INSERT whose SELECT reads the same table only this way.
    row = await pool.fetchrow(
        """WITH existing AS (SELECT count(*) AS n FROM webhook_endpoints WHERE service_user_id = $2)
           INSERT INTO webhook_endpoints (id, service_user_id, url, secret)
           SELECT $1, $2, $3, $4 FROM existing WHERE n < $5
           RETURNING id, url, created_at""", endpoint_id, service_user_id, url, secret, MAX_ENDPOINTS)
    return dict(row) if row else None


async def list_endpoints(pool: FairPool, service_user_id: uuid.UUID) -> list[dict]:
    rows = await pool.fetch("SELECT id, url, created_at FROM webhook_endpoints WHERE service_user_id = $1 "
                            "ORDER BY created_at, id", service_user_id)
    return [dict(r) for r in rows]


async def delete_endpoint(pool: FairPool, endpoint_id: uuid.UUID, service_user_id: uuid.UUID) -> str | None:
    """Deletes the endpoint and (cascade) its undelivered deliveries; returns its url, None if not found."""
    return await pool.fetchval("DELETE FROM webhook_endpoints WHERE id = $1 AND service_user_id = $2 RETURNING url",
                               endpoint_id, service_user_id)


# Only events whose transaction is older than every transaction still running: all of those have
# committed or never will, so a later page cannot be overtaken by an event committing late.
_FEED = """
SELECT e.id, e.body::text FROM events e
 WHERE e.service_user_id = $1 AND (e.xid, e.seq) > ($2::xid8, $3::bigint)
   AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY e.xid, e.seq LIMIT $4
"""


class UnknownCursor(Exception):
    """`after` names no event of this service user."""


async def feed(pool: FairPool, service_user_id: uuid.UUID, after: uuid.UUID | None, limit: int) -> list[tuple]:
    """(id, body text) oldest first, after the event `after` (keyset on the writing transaction, then seq)."""
    position = (0, 0)
    async with pool.acquire() as conn:
        if after is not None:
            row = await conn.fetchrow("SELECT xid, seq FROM events WHERE id = $1 AND service_user_id = $2",
                                      after, service_user_id)
            if row is None:
                raise UnknownCursor()
            position = (row[0], row[1])
        rows = await conn.fetch(_FEED, service_user_id, position[0], position[1], limit)
    return [(r[0], r[1]) for r in rows]


_CLAIM = """
WITH due AS (
    SELECT event_id, endpoint_id FROM webhook_deliveries
     WHERE status = 'pending' AND next_attempt_at <= now()
     ORDER BY next_attempt_at LIMIT $1
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d
       SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2::double precision)
      FROM due WHERE d.event_id = due.event_id AND d.endpoint_id = due.endpoint_id
    RETURNING d.event_id, d.endpoint_id, d.attempts
)
SELECT c.event_id, c.endpoint_id, c.attempts, w.url, w.secret, e.body::text, e.created_at
  FROM claimed c JOIN webhook_endpoints w ON w.id = c.endpoint_id JOIN events e ON e.id = c.event_id
"""


async def claim_due(pool: FairPool, limit: int, lease_seconds: float) -> list[Delivery]:
    rows = await pool.fetch(_CLAIM, limit, lease_seconds)
    return [Delivery(*r) for r in rows]


_RECORD = """
UPDATE webhook_deliveries d
   SET status = u.status,
       delivered_at = CASE WHEN u.status = 'delivered' THEN now() END,
       next_attempt_at = CASE WHEN u.status = 'pending' THEN now() + make_interval(secs => u.delay)
                              ELSE d.next_attempt_at END,
       last_error = u.error
  FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::float8[], $6::text[])
       AS u(event_id, endpoint_id, attempt, status, delay, error)
 WHERE d.event_id = u.event_id AND d.endpoint_id = u.endpoint_id AND d.attempts = u.attempt AND d.status = 'pending'
RETURNING d.event_id, d.endpoint_id
"""


async def record_outcomes(pool: FairPool, outcomes: list[tuple]) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """outcomes: (event_id, endpoint_id, attempt, status, delay_seconds, error). Returns the
    deliveries actually updated: one claimed again since (its lease ran out) keeps its newer state."""
    columns = list(zip(*outcomes, strict=True))
    rows = await pool.fetch(_RECORD, columns[0], columns[1], columns[2], columns[3], columns[4],
                            [e[:500] if e else e for e in columns[5]])
    return {(r[0], r[1]) for r in rows}


async def pending_count(pool: FairPool) -> int:
    return await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")


# The due records, then their service wallets: on Citus they live on different shards, and the
# second query names the owners, so only their shards are asked (and only when something is due).
# A deposit's or withdrawal's currency is the same on both sides.
_DUE_PENDING = """
SELECT id, type, service_user_id, coalesce(from_currency_id, to_currency_id) AS currency_id,
       CASE WHEN type = 'deposit' THEN to_wallet_id ELSE from_wallet_id END AS user_wallet_id,
       CASE WHEN type = 'deposit' THEN from_wallet_id ELSE to_wallet_id END AS gateway_wallet_id
  FROM transactions
 WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1::double precision)
 ORDER BY created_at LIMIT $2
"""
_SERVICE_WALLETS = "SELECT user_id, currency_id, id FROM wallets WHERE user_id = ANY($1::uuid[]) AND kind = 'service'"


async def due_for_expiry(pool: FairPool, ttl_seconds: float, limit: int) -> list[dict]:
    """Pending deposits and withdrawals older than the TTL (by the database clock), oldest first,
    with the wallets a settlement names. Nothing is locked: the expiry's compare-and-set decides."""
    due = await pool.fetch(_DUE_PENDING, float(ttl_seconds), limit)
    if not due:
        return []
    services = await pool.fetch(_SERVICE_WALLETS, list({r["service_user_id"] for r in due}))
    wallet_of = {(r[0], r[1]): r[2] for r in services}
    return [{"id": r["id"], "type": r["type"], "service_user_id": r["service_user_id"],
             "user_wallet_id": r["user_wallet_id"], "gateway_wallet_id": r["gateway_wallet_id"],
             "service_wallet_id": wallet_of[(r["service_user_id"], r["currency_id"])]}
            for r in due if (r["service_user_id"], r["currency_id"]) in wallet_of]
