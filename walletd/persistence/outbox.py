"""The outbox's storage: webhook endpoints, the event feed, and delivery claims.

Events themselves are written by the ledger's batch write (walletd_write_batch), in the
transaction of the money change they report. This module reads them and keeps each delivery's
state: one row per (event, endpoint) in webhook_deliveries.

Claims are leases: `claim_due` picks due rows with FOR UPDATE SKIP LOCKED and, in the same
statement, counts the attempt and moves next_attempt_at past the attempt's timeout. Several
processes therefore never send one delivery at once, and a process that dies mid-attempt leaves
a row that becomes due again when the lease ends (at least once). The attempt number is the
fencing token: an outcome is recorded only if nobody claimed the row again meanwhile.

Secrets are stored sealed (walletd/keys.py); this module stores and returns the sealed text and
never sees a key. A delivery carries the current secret and, during a rotation's overlap, the
previous one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson

from walletd.persistence.db import FairPool

MAX_ENDPOINTS = 16  # per service user: bounds the fan-out of every event


@dataclass(frozen=True)
class Delivery:
    event_id: uuid.UUID
    endpoint_id: uuid.UUID
    attempt: int
    url: str
    sealed_secrets: tuple[str, ...]  # current first, then the previous one during a rotation's overlap
    body: str
    created_at: datetime  # when the event was written: latency and the give-up horizon count from it
    # A row a previous release wrote after this one sealed the others at start (a rolling
    # upgrade): sealed at this release's next start, used as it is meanwhile.
    plaintext_secret: str | None = None


async def create_endpoint(pool: FairPool, endpoint_id: uuid.UUID, service_user_id: uuid.UUID, url: str,
                          sealed_secret: str) -> dict | None:
    """None when the service user already has MAX_ENDPOINTS (checked in the insert itself)."""
    row = await pool.fetchrow(
        """INSERT INTO webhook_endpoints (id, service_user_id, url, secret_sealed)
           SELECT $1, $2, $3, $4 WHERE (SELECT count(*) FROM webhook_endpoints WHERE service_user_id = $2) < $5
           RETURNING id, url, created_at""", endpoint_id, service_user_id, url, sealed_secret, MAX_ENDPOINTS)
    return dict(row) if row else None


async def rotate_secret(pool: FairPool, endpoint_id: uuid.UUID, service_user_id: uuid.UUID, sealed_secret: str,
                        overlap_seconds: float) -> dict | None:
    """The new secret becomes current; the one it replaces still signs for overlap_seconds (a
    previous one still in its overlap is dropped: two at most). None if not the caller's endpoint."""
    row = await pool.fetchrow(
        """UPDATE webhook_endpoints SET
               previous_secret_sealed = CASE WHEN $4::float8 > 0 THEN secret_sealed END,
               previous_secret_until = CASE WHEN $4::float8 > 0 THEN now() + make_interval(secs => $4::float8) END,
               secret_sealed = $3, secret = NULL
            WHERE id = $1 AND service_user_id = $2
        RETURNING id, url, created_at, previous_secret_until""",
        endpoint_id, service_user_id, sealed_secret, float(overlap_seconds))
    return dict(row) if row else None


async def unsealed_or_stale(pool: FairPool) -> list[tuple]:
    """(id, plaintext secret or None, sealed secret, previous sealed) of every endpoint: walletd
    checks at start which ones need sealing or re-sealing under its current key."""
    rows = await pool.fetch("SELECT id, secret, secret_sealed, previous_secret_sealed FROM webhook_endpoints")
    return [tuple(r) for r in rows]


async def store_sealed(pool: FairPool, updates: list[tuple[uuid.UUID, str | None, str | None, str | None]]) -> int:
    """(id, what the row held before: plaintext or sealed, new sealed, new previous sealed): a
    compare-and-set, so a rotation that ran meanwhile (another process) is never overwritten."""
    done = 0
    for endpoint_id, before, sealed, previous in updates:
        status = await pool.execute(
            """UPDATE webhook_endpoints SET secret_sealed = $3, secret = NULL,
                      previous_secret_sealed = coalesce($4, previous_secret_sealed)
                WHERE id = $1 AND (secret = $2 OR secret_sealed = $2)""",
            endpoint_id, before, sealed, previous)
        done += status == "UPDATE 1"
    return done


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
SELECT c.event_id, c.endpoint_id, c.attempts, w.url, w.secret_sealed,
       CASE WHEN w.previous_secret_until > now() THEN w.previous_secret_sealed END, e.body::text, e.created_at,
       w.secret
  FROM claimed c JOIN webhook_endpoints w ON w.id = c.endpoint_id JOIN events e ON e.id = c.event_id
"""


async def claim_due(pool: FairPool, limit: int, lease_seconds: float) -> list[Delivery]:
    rows = await pool.fetch(_CLAIM, limit, lease_seconds)
    return [Delivery(r[0], r[1], r[2], r[3], tuple(x for x in (r[4], r[5]) if x is not None), r[6], r[7], r[8])
            for r in rows]


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


# Events written outside a ledger batch (a record gone stale, a refused settlement). An event id
# already written is skipped, with its deliveries: publishing the same event twice sends it once.
_PUBLISH = """
WITH outbox AS (
    INSERT INTO events (id, service_user_id, type, transaction_id, body, created_at)
    SELECT e.id, e.service_user_id, e.type, e.transaction_id, e.body::json, e.created_at
      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::timestamptz[])
        AS e(id, service_user_id, type, transaction_id, body, created_at)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, service_user_id, created_at
)
INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at)
SELECT o.id, w.id, o.created_at, o.created_at
  FROM outbox o JOIN webhook_endpoints w ON w.service_user_id = o.service_user_id
"""


async def publish(conn, events: list[tuple[uuid.UUID, dict]]) -> None:
    """(service_user_id, event) pairs, event = {"id", "type", "created_at", "data": record, …}: the
    stored body is the event's JSON exactly as it will be delivered and listed."""
    if not events:
        return
    await conn.execute(_PUBLISH, [uuid.UUID(e["id"]) for _, e in events], [s for s, _ in events],
                       [e["type"] for _, e in events], [uuid.UUID(e["data"]["id"]) for _, e in events],
                       [orjson.dumps(e).decode() for _, e in events],
                       [datetime.fromisoformat(e["created_at"]) for _, e in events])


async def pending_count(pool: FairPool) -> int:
    return await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
