"""Looking transactions up: one by id as the API shows it, and pending ones as the ledger plans
their settlement (a settlement's first check is accounts.settlement_lookup)."""

from __future__ import annotations

import uuid

from walletd.domain.records import tx_json
from walletd.domain.reversal import ReversalState
from walletd.domain.state import PendingState
from walletd.domain.vocabulary import TxType
from walletd.persistence.db import FairPool

TX_COLUMNS = ("id, type, status, from_wallet_id, from_currency_id, amount, to_wallet_id, to_currency_id, rate, "
              "converted_amount, created_at, user_id, service_user_id, parent_id, commission_rate, commission")
_PENDING = (f"SELECT {TX_COLUMNS}, external_wallet_id, stale_at IS NOT NULL AS stale, settled_by "
            "FROM transactions WHERE id = ANY($1::uuid[]) ORDER BY id")


async def record(pool: FairPool, transaction_id: uuid.UUID) -> dict | None:
    """One record exactly as the API shows it."""
    row = await pool.fetchrow(f"SELECT {TX_COLUMNS} FROM transactions WHERE id = $1", transaction_id)
    return None if row is None else tx_json(row)


async def pending_states(conn, ids: list[uuid.UUID], *, lock: bool) -> dict[uuid.UUID, PendingState]:
    """The transactions a batch settles, as planning needs them; locked (in id order) on the locked path."""
    rows = await conn.fetch(_PENDING + (" FOR UPDATE" if lock else ""), ids)
    return {r["id"]: pending_state(r) for r in rows}


def pending_state(r) -> PendingState:
    return PendingState(r["id"], r["type"], r["status"], r["amount"], r["from_wallet_id"], r["to_wallet_id"],
                        r["user_id"], r["service_user_id"], r["external_wallet_id"], tx_json(r),
                        r["commission"], r["stale"], r["settled_by"])


_ORIGINALS = ("SELECT id, type, status, parent_id, from_wallet_id, to_wallet_id, amount, converted_amount, rate, "
              "user_id, service_user_id, entry_id FROM transactions WHERE id = ANY($1::uuid[]) ORDER BY id")
_REVERSED = "SELECT parent_id FROM transactions WHERE parent_id = ANY($1::uuid[]) AND type = 'reversal'"
_LEGS = "SELECT entry_id, wallet_id, bucket, amount, transaction_id FROM postings WHERE entry_id = ANY($1::uuid[])"


async def reversal_states(conn, ids: list[uuid.UUID], *, lock: bool) -> dict[uuid.UUID, ReversalState]:
    """The originals a batch reverses; locked (in id order) on the locked path, so a reversal racing
    in another process waits, then finds this one. Whether one was reversed is read after the lock
    (in its own statement: a row lock's wait does not refresh the rest of the statement's snapshot)."""
    rows = await conn.fetch(_ORIGINALS + (" FOR UPDATE" if lock else ""), ids)
    if not rows:
        return {}
    reversed_ids = {r[0] for r in await conn.fetch(_REVERSED, [r["id"] for r in rows])}
    postings: dict[uuid.UUID, list] = {}
    for p in await conn.fetch(_LEGS, [r["entry_id"] for r in rows if r["entry_id"] is not None]):
        postings.setdefault(p[0], []).append(p)

    def own(original) -> list:
        # A transfer is only the postings naming it: a multi-leg transfer's legs share one entry.
        return [(p[1], p[2], p[3]) for p in postings.get(original["entry_id"], [])
                if original["type"] != TxType.TRANSFER or p[4] == original["id"]]

    return {r["id"]: ReversalState(dict(r), own(r), r["id"] in reversed_ids) for r in rows}


async def reversal_target(pool: FairPool, transaction_id: uuid.UUID) -> tuple[dict, list[uuid.UUID]] | None:
    """The original and the wallets its entry posted to: what a Reverse command names."""
    async with pool.acquire() as conn:
        states = await reversal_states(conn, [transaction_id], lock=False)
    state = states.get(transaction_id)
    if state is None:
        return None
    return state.record, sorted({wallet_id for wallet_id, _, _ in state.legs})
