"""The books of one wallet: its balance at an instant, its statement, a payment service's wallets.

Every posting carries its journal entry's time, and postings_wallet_time (migration 0009) holds a
wallet's postings in time order. A balance at T is the wallet's balance now minus its postings
after T, read in one statement (one snapshot), so it equals replaying the journal up to T. A
statement line is the net of one wallet's balance postings for one (entry, transaction record)
pair; lines are ordered by (time, entry, record), which is also the keyset of their pages.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from walletd.persistence.accounts import WALLET_COLUMNS
from walletd.persistence.db import FairPool

NIL = uuid.UUID(int=0)  # the record of a posting written before postings named one sorts first

_BALANCE_AT = """
SELECT w.currency_id, w.balance - coalesce(later.b, 0) AS balance, w.reserved_balance - coalesce(later.r, 0) AS reserved
  FROM wallets w LEFT JOIN LATERAL (
       SELECT sum(p.amount) FILTER (WHERE p.bucket = 'B') AS b, sum(p.amount) FILTER (WHERE p.bucket = 'R') AS r
         FROM postings p WHERE p.wallet_id = w.id AND p.created_at > $2) later ON true
 WHERE w.id = $1 AND w.user_id = $3 AND w.kind = ANY($4::text[])"""

_WALLET = "SELECT currency_id, created_at FROM wallets WHERE id = $1 AND user_id = $2 AND kind = ANY($3::text[])"

# $1 wallet, $2 from (NULL: the beginning), $3 to, then the position after which the page starts
# (NULL: the period's start): $4 time, $5 entry, $6 record; $7 the number of lines. The inner
# range is on the index's own columns (wallet, time, entry); lines of one entry are ordered by
# record within it.
_LINES = f"""
SELECT l.created_at, l.entry_id, l.tx, l.amount, t.type, t.status FROM (
    SELECT p.created_at, p.entry_id, coalesce(p.transaction_id, '{NIL}'::uuid) AS tx, sum(p.amount) AS amount
      FROM postings p
     WHERE p.wallet_id = $1 AND p.bucket = 'B'
       AND p.created_at > coalesce($2::timestamptz, '-infinity') AND p.created_at <= $3
       AND (p.created_at, p.entry_id) >= (coalesce($4::timestamptz, '-infinity'), coalesce($5::uuid, '{NIL}'))
     GROUP BY p.created_at, p.entry_id, 3
    HAVING sum(p.amount) <> 0
) l LEFT JOIN transactions t ON t.id = l.tx
 WHERE $4::timestamptz IS NULL OR (l.created_at, l.entry_id, l.tx) > ($4, $5::uuid, $6::uuid)
 ORDER BY l.created_at, l.entry_id, l.tx
 LIMIT $7"""

# The balances at both ends of the period, in the same statement (so the same snapshot) as the
# first lines: opening + the sum of every line = closing.
_FIRST_LINES = f"""
WITH ends AS (
    SELECT CASE WHEN $2::timestamptz IS NULL THEN 0 ELSE w.balance - coalesce((
               SELECT sum(p.amount) FROM postings p
                WHERE p.wallet_id = w.id AND p.bucket = 'B' AND p.created_at > $2), 0) END AS opening,
           w.balance - coalesce((
               SELECT sum(p.amount) FROM postings p
                WHERE p.wallet_id = w.id AND p.bucket = 'B' AND p.created_at > $3), 0) AS closing
      FROM wallets w WHERE w.id = $1
)
SELECT ends.opening, ends.closing, lines.* FROM ends LEFT JOIN LATERAL ({_LINES}) lines ON true"""


@dataclass(frozen=True)
class Position:
    """Where a statement page starts: after this line (time, entry, record)."""

    at: datetime
    entry_id: uuid.UUID
    record_id: uuid.UUID


@dataclass(frozen=True)
class Line:
    at: datetime
    entry_id: uuid.UUID
    record_id: uuid.UUID | None
    amount: Decimal
    type: str | None
    status: str | None

    @property
    def position(self) -> Position:
        return Position(self.at, self.entry_id, self.record_id or NIL)


def _line(row) -> Line:
    record = row["tx"]
    return Line(row["created_at"], row["entry_id"], None if record == NIL else record, row["amount"],
                row["type"], row["status"])


async def balance_at(pool: FairPool, wallet_id: uuid.UUID, at: datetime, owner: uuid.UUID,
                     kinds: Sequence[str]) -> asyncpg.Record | None:
    """(currency_id, balance, reserved) at `at`, or None unless the wallet is owner's and of one
    of these kinds (the sum is never computed for anyone else's wallet)."""
    return await pool.fetchrow(_BALANCE_AT, wallet_id, at, owner, list(kinds))


async def readable_wallet(pool: FairPool, wallet_id: uuid.UUID, owner: uuid.UUID,
                          kinds: Sequence[str]) -> asyncpg.Record | None:
    return await pool.fetchrow(_WALLET, wallet_id, owner, list(kinds))


async def first_lines(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None, end: datetime,
                      limit: int) -> tuple[Decimal, Decimal, list[Line]]:
    """(opening balance, closing balance, the first `limit` lines) of the period (start, end]."""
    rows = await pool.fetch(_FIRST_LINES, wallet_id, start, end, *_after(None), limit)
    if not rows:
        raise LookupError(wallet_id)
    return rows[0]["opening"], rows[0]["closing"], [_line(r) for r in rows if r["entry_id"] is not None]


async def lines_after(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None, end: datetime,
                      position: Position, limit: int) -> list[Line]:
    rows = await pool.fetch(_LINES, wallet_id, start, end, *_after(position), limit)
    return [_line(r) for r in rows]


def _after(position: Position | None) -> tuple:
    if position is None:
        return (None, None, None)
    return (position.at, position.entry_id, position.record_id)


async def service_wallets(pool: FairPool, service_user_id: uuid.UUID) -> list[asyncpg.Record]:
    """A payment service's own wallets (its service and gateway wallet in every currency)."""
    return await pool.fetch(
        f"""SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id
            WHERE w.user_id = $1 AND w.kind IN ('service', 'gateway') ORDER BY w.currency_id, w.kind DESC""",
        service_user_id)
