"""Transaction history with keyset pagination on seq: each page is an index range scan, so
its cost does not grow with the length of the history."""

from __future__ import annotations

import uuid

from walletd.domain.records import TX_FIELDS, tx_from_line
from walletd.persistence.db import FairPool

_NO_CURSOR = 2**63 - 1
# Pending deposits and withdrawals are listed whole (newest first, up to this many) on every
# page rather than paginated: a client must always see what is still open.
PENDING_LIMIT = 500


_RAW = ("seq, id, type, status, from_wallet_id, from_currency_id, amount, to_wallet_id, to_currency_id, rate, "
        "converted_amount, created_at, user_id, service_user_id, parent_id, commission_rate, commission")
# What a page selects of the rows it keeps: its position and the record as one text, its fields
# in the API's order (domain.records.TX_FIELDS) as domain.records.tx_json writes them (uuid::text
# is the canonical form; NUMERIC(…, 10) prints all ten places; the instant in UTC with
# microseconds), between unit separators, '' for NULL: domain.records.tx_from_line splits it. One
# column rather than sixteen: walletd decodes 51 values a page instead of 816 (a page's CPU in
# walletd 0.155 → 0.120 ms, PostgreSQL's unchanged, timed alone by hand on 2026-12-05; paired
# runs in docs/performance.md).
_FIELD_TEXT = {
    "id": "id::text", "type": "type", "status": "status", "from_wallet_id": "from_wallet_id::text",
    "from_currency_id": "from_currency_id::text", "amount": "amount::text", "to_wallet_id": "to_wallet_id::text",
    "to_currency_id": "to_currency_id::text", "rate": "rate::text", "converted_amount": "converted_amount::text",
    "timestamp": """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""",
    "user_id": "user_id::text", "service_user_id": "service_user_id::text", "parent_id": "parent_id::text",
    "commission_rate": "commission_rate::text", "commission": "commission::text"}
_RECORD = ("seq, concat_ws(chr(31), " + ", ".join(f"coalesce({_FIELD_TEXT[f]}, '')" for f in TX_FIELDS)
           + ") AS line")


# The largest page a client may ask for (handlers.schemas.HistoryParams), and the row that says
# whether another page follows.
MAX_ROWS = 200 + 1


def _page(side: str, key: str = "$1", extra: str = "", limit: str = "$3") -> str:
    return (f"(SELECT {_RAW} FROM transactions WHERE {side} = {key} AND seq < $2 "
            f"AND status <> 'pending' {extra} ORDER BY seq DESC LIMIT {limit})")


# The branches pick rows from the per-wallet indexes; only the rows kept are rendered. Their limit
# is a constant so that PostgreSQL plans this statement once per connection: with `LIMIT $3` a
# generic plan is costed for a tenth of the wallet's rows and never chosen, and planning anew on
# every page cost as much as running it. The branches are read lazily, up to the page's limit.
_WALLET_PAGE = (f"SELECT {_RECORD} FROM ({_page('from_wallet_id', limit=str(MAX_ROWS))} UNION ALL "
                f"{_page('to_wallet_id', limit=str(MAX_ROWS))}) t ORDER BY seq DESC LIMIT $3")
# Per wallet of the user, the newest rows from each wallet index; a transfer between two wallets
# of one user appears once (the `to` branch skips rows the user sent).
_USER_PAGE = f"""
SELECT {_RECORD} FROM (
    SELECT t.* FROM wallets w CROSS JOIN LATERAL (
        {_page('from_wallet_id', 'w.id')}
        UNION ALL
        {_page('to_wallet_id', 'w.id', 'AND from_user_id IS DISTINCT FROM $1')}
    ) t
    WHERE w.user_id = $1
    ORDER BY t.seq DESC LIMIT $3
) page ORDER BY seq DESC
"""


# One round trip per page: the settled records (kind 0) and the pending ones (kind 1).
_WALLET_PENDING = f"""SELECT 1, {_RECORD} FROM (
    SELECT * FROM transactions WHERE user_id = (SELECT user_id FROM wallets WHERE id = $1)
       AND status = 'pending' AND (from_wallet_id = $1 OR to_wallet_id = $1) ORDER BY seq DESC LIMIT {PENDING_LIMIT}
) pending"""
_USER_PENDING = f"""SELECT 1, {_RECORD} FROM (
    SELECT * FROM transactions WHERE user_id = $1 AND status = 'pending' ORDER BY seq DESC LIMIT {PENDING_LIMIT}
) pending"""
_WALLET_HISTORY = f"SELECT 0, * FROM ({_WALLET_PAGE}) page UNION ALL ({_WALLET_PENDING}) ORDER BY 1, 2 DESC"
_USER_HISTORY = f"SELECT 0, * FROM ({_USER_PAGE}) page UNION ALL ({_USER_PENDING}) ORDER BY 1, 2 DESC"

# The Citus editions (persistence/citus/): a record is stored once per user whose history it is
# (owner_id, the distribution column), so a page names its owner ($4 for a wallet's, $1 for a
# user's) and is a query on that user's shard alone. Pending records belong to their customer.
_WALLET_PAGE_OWNED = (f"SELECT {_RECORD} FROM ({_page('owner_id = $4 AND from_wallet_id', limit=str(MAX_ROWS))} "
                      f"UNION ALL {_page('owner_id = $4 AND to_wallet_id', limit=str(MAX_ROWS))}) t "
                      "ORDER BY seq DESC LIMIT $3")
_WALLET_PENDING_OWNED = f"""SELECT 1, {_RECORD} FROM (
    SELECT * FROM transactions WHERE owner_id = $4 AND user_id = $4
       AND status = 'pending' AND (from_wallet_id = $1 OR to_wallet_id = $1) ORDER BY seq DESC LIMIT {PENDING_LIMIT}
) pending"""
_USER_PENDING_OWNED = f"""SELECT 1, {_RECORD} FROM (
    SELECT * FROM transactions WHERE owner_id = $1 AND user_id = $1 AND status = 'pending'
     ORDER BY seq DESC LIMIT {PENDING_LIMIT}
) pending"""
_WALLET_HISTORY_OWNED = (f"SELECT 0, * FROM ({_WALLET_PAGE_OWNED}) page UNION ALL ({_WALLET_PENDING_OWNED}) "
                         "ORDER BY 1, 2 DESC")
_USER_HISTORY_OWNED = (f"SELECT 0, * FROM (SELECT {_RECORD} FROM {_page('owner_id')}) page "
                       f"UNION ALL ({_USER_PENDING_OWNED}) ORDER BY 1, 2 DESC")

async def wallet_page(pool: FairPool, wallet_id: uuid.UUID, before: int | None, limit: int, owner_id: uuid.UUID):
    """(records, the next page's position or None, pending records), the records as the API shows
    them (domain.records.tx_from_line). A position is a global sequence number: the handlers seal
    it before a client sees it. The caller has checked that owner_id owns the wallet."""
    if limit + 1 > MAX_ROWS:
        raise ValueError(f"a page holds at most {MAX_ROWS - 1} records")
    if pool.distributed:
        rows = await pool.fetch(_WALLET_HISTORY_OWNED, wallet_id, before or _NO_CURSOR, limit + 1, owner_id)
    else:
        rows = await pool.fetch(_WALLET_HISTORY, wallet_id, before or _NO_CURSOR, limit + 1)
    return _split(rows, limit)


async def user_page(pool: FairPool, user_id: uuid.UUID, before: int | None, limit: int):
    query = _USER_HISTORY_OWNED if pool.distributed else _USER_HISTORY
    return _split(await pool.fetch(query, user_id, before or _NO_CURSOR, limit + 1), limit)


def _split(rows, limit):
    settled = [r for r in rows if r[0] == 0]
    page = settled[:limit]
    next_position = page[-1]["seq"] if len(settled) > limit else None
    return [tx_from_line(r[2]) for r in page], next_position, [tx_from_line(r[2]) for r in rows if r[0] == 1]

