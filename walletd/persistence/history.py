"""Transaction history with keyset pagination on seq: each page is an index range scan, so
its cost does not grow with the length of the history."""

from __future__ import annotations

import uuid

import asyncpg


_NO_CURSOR = 2**63 - 1
# Ids and amounts as text: PostgreSQL formats them (NUMERIC(…, 10) prints exactly 10 places),
# which costs walletd far less CPU per row than decoding and re-formatting them.
TX_COLUMNS = ("id::text AS id, type, status, from_wallet_id::text AS from_wallet_id, from_currency_id, "
              "amount::text AS amount, to_wallet_id::text AS to_wallet_id, to_currency_id, rate::text AS rate, "
              "converted_amount::text AS converted_amount, created_at, user_id::text AS user_id, "
              "service_user_id::text AS service_user_id, parent_id::text AS parent_id")
# Pending deposits and withdrawals are listed whole (newest first, up to this many) on every
# page rather than paginated: a client must always see what is still open.
PENDING_LIMIT = 500


def _page(side: str) -> str:
    return (f"(SELECT {TX_COLUMNS}, seq FROM transactions WHERE {side} = $1 AND seq < $2 "
            f"AND status <> 'pending' ORDER BY seq DESC LIMIT $3)")


_WALLET_PAGE = (f"SELECT * FROM ({_page('from_wallet_id')} UNION ALL {_page('to_wallet_id')}) t "
                "ORDER BY seq DESC LIMIT $3")
# Per wallet of the user, the newest rows from each wallet index; a transfer between two wallets
# of one user appears once (the `to` branch skips rows the user sent).
_USER_PAGE = f"""
SELECT t.* FROM wallets w CROSS JOIN LATERAL (
    (SELECT {TX_COLUMNS}, seq FROM transactions WHERE from_wallet_id = w.id AND seq < $2
        AND status <> 'pending' ORDER BY seq DESC LIMIT $3)
    UNION ALL
    (SELECT {TX_COLUMNS}, seq FROM transactions WHERE to_wallet_id = w.id AND seq < $2
        AND status <> 'pending' AND from_user_id IS DISTINCT FROM $1 ORDER BY seq DESC LIMIT $3)
) t
WHERE w.user_id = $1
ORDER BY t.seq DESC LIMIT $3
"""


async def wallet_page(pool: asyncpg.Pool, wallet_id: uuid.UUID, before: int | None, limit: int):
    rows = await pool.fetch(_WALLET_PAGE, wallet_id, before or _NO_CURSOR, limit + 1)
    pending = await pool.fetch(
        f"""SELECT {TX_COLUMNS} FROM transactions WHERE user_id = (SELECT user_id FROM wallets WHERE id = $1)
            AND status = 'pending' AND (from_wallet_id = $1 OR to_wallet_id = $1) ORDER BY seq DESC LIMIT $2""",
        wallet_id, PENDING_LIMIT)
    return _split(rows, limit), pending


async def user_page(pool: asyncpg.Pool, user_id: uuid.UUID, before: int | None, limit: int):
    rows = await pool.fetch(_USER_PAGE, user_id, before or _NO_CURSOR, limit + 1)
    pending = await pool.fetch(
        f"SELECT {TX_COLUMNS} FROM transactions WHERE user_id = $1 AND status = 'pending' ORDER BY seq DESC LIMIT $2",
        user_id, PENDING_LIMIT)
    return _split(rows, limit), pending


def _split(rows, limit):
    page = rows[:limit]
    next_cursor = str(page[-1]["seq"]) if len(rows) > limit else None
    return page, next_cursor


async def find_transaction(pool: asyncpg.Pool, transaction_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT id, type, status, service_user_id, from_wallet_id, to_wallet_id, "
        "coalesce(from_currency_id, to_currency_id) AS currency_id FROM transactions WHERE id = $1", transaction_id)
