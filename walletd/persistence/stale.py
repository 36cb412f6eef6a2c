"""Stale pending records: marking them (the sweep), listing them, counting them.

A pending deposit or withdrawal older than WALLETD_PENDING_TTL is marked stale (stale_at) by one
statement that takes the due rows with FOR UPDATE SKIP LOCKED, so several processes mark each
record once; its `*.stale` event is written in the same transaction. Nothing else changes: the
status stays `pending`, the hold stays, and a settlement (which only ever compares the status)
goes on as before.
"""

from __future__ import annotations

import uuid

from walletd.domain.ids import new_id
from walletd.domain.records import tx_json
from walletd.persistence import outbox
from walletd.persistence.db import FairPool
from walletd.persistence.transactions import TX_COLUMNS

_T_COLUMNS = ", ".join("t." + column.strip() for column in TX_COLUMNS.split(","))

_MARK = f"""
UPDATE transactions t SET stale_at = now()
  FROM (SELECT id FROM transactions
         WHERE status = 'pending' AND stale_at IS NULL
           AND created_at < now() - make_interval(secs => $1::double precision)
         ORDER BY created_at LIMIT $2
           FOR UPDATE SKIP LOCKED) due
 WHERE t.id = due.id AND t.status = 'pending'
RETURNING {_T_COLUMNS}, t.stale_at
"""
# The Citus edition (persistence/citus/): Citus takes row locks only in a query on one shard, so
# the due records are read first, then marked by a compare-and-set on stale_at (a record another
# process marked meanwhile is not marked, nor published, twice), in one transaction that commits
# with two-phase commit (the vote of persistence/citus/write_batch.sql): the marks on the workers
# and the events on the coordinator commit together.
_DUE_CITUS = """
SELECT owner_id, id FROM transactions
 WHERE status = 'pending' AND stale_at IS NULL AND created_at < now() - make_interval(secs => $1::double precision)
 ORDER BY created_at LIMIT $2"""
_MARK_CITUS = f"""
UPDATE transactions t SET stale_at = now()
 WHERE t.owner_id = ANY($1::uuid[]) AND t.id = ANY($2::uuid[]) AND t.status = 'pending' AND t.stale_at IS NULL
RETURNING {_T_COLUMNS}, t.stale_at"""


async def mark_stale(pool: FairPool, ttl_seconds: float, limit: int) -> list[dict]:
    """Marks up to `limit` pending records past the TTL (database clock) stale and publishes their
    events; returns their records as the API shows them."""
    async with pool.acquire() as conn, conn.transaction():
        if pool.distributed:
            due = await conn.fetch(_DUE_CITUS, float(ttl_seconds), limit)
            if not due:
                return []
            await conn.execute("INSERT INTO walletd_two_phase VALUES (1) ON CONFLICT DO NOTHING")
            rows = await conn.fetch(_MARK_CITUS, [r[0] for r in due], [r[1] for r in due])
        else:
            rows = await conn.fetch(_MARK, float(ttl_seconds), limit)
        events = [(row["service_user_id"], {
            "id": str(new_id()), "type": f"{row['type']}.stale",
            "created_at": row["stale_at"].isoformat(timespec="microseconds"), "data": tx_json(row)})
            for row in rows]
        await outbox.publish(conn, events)
    return [event["data"] for _, event in events]


# Stale pending records, and the records the previous release expired (left to reconcile).
_STALE = "((status = 'pending' AND stale_at IS NOT NULL) OR status = 'expired')"


async def list_stale(pool: FairPool, service_user_id: uuid.UUID | None, after: uuid.UUID | None,
                     limit: int) -> list[dict]:
    """Keyset on the id (time-ordered UUIDv7: oldest first), after the record `after`; one
    service's, or all (service_user_id None: the operator)."""
    rows = await pool.fetch(
        f"""SELECT {TX_COLUMNS} FROM transactions
             WHERE {_STALE} AND ($1::uuid IS NULL OR service_user_id = $1) AND ($2::uuid IS NULL OR id > $2)
             ORDER BY id LIMIT $3""",
        service_user_id, after, limit)
    return [tx_json(r) for r in rows]


async def stale_counts(pool: FairPool) -> dict[str, int]:
    """Pending records that are stale, per type (every process: the same count from the database)."""
    rows = await pool.fetch("SELECT type, count(*) FROM transactions WHERE status = 'pending' AND stale_at IS NOT NULL "
                            "GROUP BY type")
    return {r[0]: r[1] for r in rows}
