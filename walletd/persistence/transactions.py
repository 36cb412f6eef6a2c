"""Looking transactions up: one by id (a settlement's first check), and pending ones as the
ledger plans their settlement."""

from __future__ import annotations

import uuid

import asyncpg

from walletd.domain.ledger import PendingState, tx_json
from walletd.persistence.db import FairPool

TX_COLUMNS = ("id, type, status, from_wallet_id, from_currency_id, amount, to_wallet_id, to_currency_id, rate, "
              "converted_amount, created_at, user_id, service_user_id, parent_id")
_PENDING = f"SELECT {TX_COLUMNS}, external_wallet_id FROM transactions WHERE id = ANY($1::uuid[]) ORDER BY id"
# Citus: the records are read from their owners' shards only (a settled record has one copy, its customer's).
_PENDING_OWNED = (f"SELECT {TX_COLUMNS}, external_wallet_id FROM transactions "
                  "WHERE owner_id = ANY($2::uuid[]) AND id = ANY($1::uuid[]) ORDER BY id")


async def find_transaction(pool: FairPool, transaction_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT id, type, status, service_user_id, from_wallet_id, to_wallet_id, "
        "coalesce(from_currency_id, to_currency_id) AS currency_id FROM transactions WHERE id = $1", transaction_id)


async def pending_states(conn, ids: list[uuid.UUID], *, lock: bool,
                         owners: list[uuid.UUID] | None = None) -> dict[uuid.UUID, PendingState]:
    """The transactions a batch settles, as planning needs them; locked (in id order) on the locked
    path. With owners (on Citus: the customers), only their records are read, and nothing is locked."""
    if owners is not None:
        rows = await conn.fetch(_PENDING_OWNED, ids, owners)
    else:
        rows = await conn.fetch(_PENDING + (" FOR UPDATE" if lock else ""), ids)
    return {
        r["id"]: PendingState(r["id"], r["type"], r["status"], r["amount"], r["from_wallet_id"], r["to_wallet_id"],
                              r["user_id"], r["service_user_id"], r["external_wallet_id"], tx_json(r))
        for r in rows
    }
