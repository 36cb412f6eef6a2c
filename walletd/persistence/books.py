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
from datetime import datetime, timezone
from decimal import Context, Decimal

import asyncpg

from walletd.domain.money import fmt
from walletd.domain.vocabulary import Bucket
from walletd.persistence.accounts import WALLET_COLUMNS
from walletd.persistence.db import FairPool

NIL = uuid.UUID(int=0)  # the record of a posting that names none (written by hand, or before 0009)


def _sums_at(at: str, sums: str, needed: str = "true", owner: str = "") -> str:
    """A lateral subquery: `sums` (aggregates over the postings p) of wallet w's postings on one
    side of the instant `at` (an SQL expression), and `forward`, which side it is. Forward (the
    postings up to `at`, to add up from zero) when `at` is nearer the wallet's creation than now,
    else backward (the postings after `at`, to take off the balance now): the same number either
    way (a wallet's balances are the sums of its postings, which `walletd audit` checks), read
    from whichever side holds fewer postings when the wallet's activity is even. `needed`: a
    condition on the parameters; when false no posting is read. `owner`: on Citus, the parameter
    naming the wallet's owner (the postings' shard)."""
    co_located = f" AND p.user_id = {owner}" if owner else ""
    return f"""(SELECT f.forward, {sums}
                  FROM (SELECT {at} - w.created_at < statement_timestamp() - {at} AS forward) f
                  LEFT JOIN postings p ON {needed} AND p.wallet_id = w.id{co_located}
                        AND p.created_at > CASE WHEN f.forward THEN '-infinity' ELSE {at} END
                        AND p.created_at <= CASE WHEN f.forward THEN {at} ELSE 'infinity' END
                 GROUP BY f.forward)"""


# What a wallet's postings add to its balance and to its withdrawal hold.
_BALANCE_SUM = f"coalesce(sum(p.amount) FILTER (WHERE p.bucket = '{Bucket.BALANCE}'), 0)"
_RESERVED_SUM = f"coalesce(sum(p.amount) FILTER (WHERE p.bucket = '{Bucket.RESERVED}'), 0)"


def _balance_at(owner: str = "") -> str:
    return f"""
SELECT w.currency_id,
       CASE WHEN s.forward THEN 0 ELSE w.balance END + (CASE WHEN s.forward THEN 1 ELSE -1 END) * s.b AS balance,
       CASE WHEN s.forward THEN 0 ELSE w.reserved_balance END + (CASE WHEN s.forward THEN 1 ELSE -1 END) * s.r
           AS reserved
  FROM wallets w CROSS JOIN LATERAL {_sums_at("$2::timestamptz", f"{_BALANCE_SUM} AS b, {_RESERVED_SUM} AS r",
                                              owner=owner)} s
 WHERE w.id = $1 AND w.user_id = $3 AND w.kind = ANY($4::text[])"""


_BALANCE_AT = _balance_at()

_WALLET = "SELECT currency_id, created_at FROM wallets WHERE id = $1 AND user_id = $2 AND kind = ANY($3::text[])"

# $1 wallet, $2 from (NULL: the beginning), $3 to, then the line after which the page starts
# (NULL: none, the period's start): $4 time, $5 entry, $6 record; $7 the number of lines. The
# scan is a range of postings_wallet_time in its own order (time, entry, record: a line's key),
# grouped as it comes and cut at the limit; only the page's lines look their record up (by its
# primary key: LIMIT 1 keeps the planner from joining the whole transactions table instead).
def _line_sums(owner: str = "") -> str:
    return f"""
    SELECT p.created_at, p.entry_id, p.transaction_id, sum(p.amount) AS amount
      FROM postings p
     WHERE p.wallet_id = $1 AND p.bucket = '{Bucket.BALANCE}'{f" AND p.user_id = {owner}" if owner else ""}
       AND p.created_at > coalesce($2::timestamptz, '-infinity') AND p.created_at <= $3
       AND (p.created_at, p.entry_id, p.transaction_id)
           > (coalesce($4::timestamptz, '-infinity'), coalesce($5::uuid, '{NIL}'), coalesce($6::uuid, '{NIL}'))
     GROUP BY p.created_at, p.entry_id, p.transaction_id
    HAVING sum(p.amount) <> 0
     ORDER BY p.created_at, p.entry_id, p.transaction_id
     LIMIT $7"""


_LINES = f"""
SELECT l.created_at, l.entry_id, l.transaction_id AS tx, l.amount, t.type, t.status FROM ({_line_sums()}
) l LEFT JOIN LATERAL (SELECT t.type, t.status FROM transactions t WHERE t.id = l.transaction_id LIMIT 1) t ON true
 ORDER BY l.created_at, l.entry_id, l.transaction_id"""

# The balances at both ends of the period, in the same statement (so the same snapshot) as the
# first lines: opening + the sum of every line = closing.
_B = f"{_BALANCE_SUM} AS b"


def _ends(owner: str = "") -> str:
    return f"""
SELECT CASE WHEN $2::timestamptz IS NULL THEN 0
            ELSE CASE WHEN o.forward THEN o.b ELSE w.balance - o.b END END AS opening,
       CASE WHEN c.forward THEN c.b ELSE w.balance - c.b END AS closing
  FROM wallets w CROSS JOIN LATERAL {_sums_at("$2::timestamptz", _B, "$2::timestamptz IS NOT NULL", owner)} o
                 CROSS JOIN LATERAL {_sums_at("$3::timestamptz", _B, owner=owner)} c
 WHERE w.id = $1{f" AND w.user_id = {owner}" if owner else ""}"""


_ENDS = _ends()
_FIRST_LINES = f"""
WITH ends AS MATERIALIZED ({_ENDS})
SELECT ends.opening, ends.closing, lines.* FROM ends LEFT JOIN ({_LINES}) lines ON true"""

# The same lines as CSV text, rendered by PostgreSQL (what walletd would render, at a fraction
# of the cost per line): $8 is the balance before the first line. One row: the text, the number
# of lines, and the last line's key and balance, where the next chunk starts.
_CSV_CHUNK = f"""
WITH running AS MATERIALIZED (
    SELECT l.*, round($8::numeric + sum(l.amount) OVER (
               ORDER BY l.created_at, l.entry_id, l.tx ROWS UNBOUNDED PRECEDING), 10) AS balance_after
      FROM ({_LINES}) l
)
SELECT (SELECT string_agg(concat_ws(',', CASE WHEN r.tx = '{NIL}' THEN '' ELSE r.tx::text END,
                                    coalesce(r.type, ''), coalesce(r.status, ''), round(r.amount, 10)::text,
                                    r.balance_after::text,
                                    to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')),
                          E'\\r\\n' ORDER BY r.created_at, r.entry_id, r.tx) FROM running r) AS text,
       (SELECT count(*) FROM running) AS lines, last.created_at, last.entry_id, last.tx, last.balance_after
  FROM (SELECT 1) one LEFT JOIN LATERAL (
       SELECT * FROM running ORDER BY created_at DESC, entry_id DESC, tx DESC LIMIT 1) last ON true"""

# The Citus editions (persistence/citus/): a wallet's postings sit on its owner's shard, so each
# statement names the owner ($3 for a balance, $4 for the ends, $8 beside the lines' parameters)
# and runs whole on that shard (the ends and the first lines still in one statement, one
# snapshot). The records the lines name may sit on other users' shards (a payment service's
# wallets realize its customers' records), so they are looked up after the lines, by id: their
# type and status as of that moment. The CSV is rendered by walletd, as PostgreSQL renders it.
_BALANCE_AT_CITUS = _balance_at("$3")
_ENDS_CITUS = _ends("$4")
_LINES_CITUS = _line_sums("$8")
_FIRST_LINES_CITUS = f"""
WITH ends AS MATERIALIZED ({_ends("$8")})
SELECT ends.opening, ends.closing, lines.* FROM ends LEFT JOIN ({_LINES_CITUS}) lines ON true"""
_RECORDS_OWNED = "SELECT id, type, status FROM transactions WHERE owner_id = $2 AND id = ANY($1::uuid[])"
_RECORDS = "SELECT DISTINCT ON (id) id, type, status FROM transactions WHERE id = ANY($1::uuid[])"
_EXACT = Context(prec=60)  # NUMERIC(38, 10) sums exactly


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
    query = _BALANCE_AT_CITUS if pool.distributed else _BALANCE_AT
    return await pool.fetchrow(query, wallet_id, at, owner, list(kinds))


async def readable_wallet(pool: FairPool, wallet_id: uuid.UUID, owner: uuid.UUID,
                          kinds: Sequence[str]) -> asyncpg.Record | None:
    return await pool.fetchrow(_WALLET, wallet_id, owner, list(kinds))


async def first_lines(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None, end: datetime,
                      limit: int, owner: uuid.UUID) -> tuple[Decimal, Decimal, list[Line]]:
    """(opening balance, closing balance, the first `limit` lines) of the period (start, end]. The
    caller has checked that owner owns the wallet (so do the other statement functions)."""
    if pool.distributed:
        rows = await pool.fetch(_FIRST_LINES_CITUS, wallet_id, start, end, *_after(None), limit, owner)
        if not rows:
            raise LookupError(wallet_id)
        lines = await _citus_lines(pool, owner, [r for r in rows if r["entry_id"] is not None])
        return rows[0]["opening"], rows[0]["closing"], lines
    rows = await pool.fetch(_FIRST_LINES, wallet_id, start, end, *_after(None), limit)
    if not rows:
        raise LookupError(wallet_id)
    return rows[0]["opening"], rows[0]["closing"], [_line(r) for r in rows if r["entry_id"] is not None]


async def lines_after(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None, end: datetime,
                      position: Position, limit: int, owner: uuid.UUID) -> list[Line]:
    if pool.distributed:
        return await _citus_lines_after(pool, wallet_id, start, end, position, limit, owner)
    rows = await pool.fetch(_LINES, wallet_id, start, end, *_after(position), limit)
    return [_line(r) for r in rows]


async def _citus_lines_after(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None, end: datetime,
                             position: Position | None, limit: int, owner: uuid.UUID) -> list[Line]:
    rows = await pool.fetch(_LINES_CITUS, wallet_id, start, end, *_after(position), limit, owner)
    return await _citus_lines(pool, owner, rows)


async def _citus_lines(pool: FairPool, owner: uuid.UUID, rows) -> list[Line]:
    """Lines read without their records (see _LINES_CITUS), with them: from the owner's shard,
    then, for those not there, from every shard."""
    ids = list({r["transaction_id"] for r in rows} - {NIL})
    records = {r[0]: r for r in await pool.fetch(_RECORDS_OWNED, ids, owner)} if ids else {}
    missing = [i for i in ids if i not in records]
    if missing:
        records |= {r[0]: r for r in await pool.fetch(_RECORDS, missing)}
    lines = []
    for r in rows:
        record = records.get(r["transaction_id"])
        lines.append(Line(r["created_at"], r["entry_id"], None if r["transaction_id"] == NIL else r["transaction_id"],
                          r["amount"], record and record["type"], record and record["status"]))
    return lines


def _after(position: Position | None) -> tuple:
    if position is None:
        return (None, None, None)
    return (position.at, position.entry_id, position.record_id)


async def period_ends(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None,
                      end: datetime, owner: uuid.UUID) -> tuple[Decimal, Decimal]:
    """The wallet's balance at both ends of the period (start, end]: (opening, closing)."""
    if pool.distributed:
        row = await pool.fetchrow(_ENDS_CITUS, wallet_id, start, end, owner)
    else:
        row = await pool.fetchrow(_ENDS, wallet_id, start, end)
    if row is None:
        raise LookupError(wallet_id)
    return row["opening"], row["closing"]


@dataclass(frozen=True)
class CsvChunk:
    text: str  # the lines, each ending in CRLF ("" when there are none)
    lines: int
    last: Position | None
    balance: Decimal  # after the last line


async def csv_chunk(pool: FairPool, wallet_id: uuid.UUID, start: datetime | None, end: datetime,
                    after: Position | None, balance: Decimal, limit: int, owner: uuid.UUID) -> CsvChunk:
    """Up to `limit` lines after `after` as CSV rows (transaction_id, type, status, amount,
    balance_after, timestamp), balance_after running on from `balance`."""
    if pool.distributed:
        lines = await _citus_lines_after(pool, wallet_id, start, end, after, limit, owner)
        rows = []
        for line in lines:
            balance = _EXACT.add(balance, line.amount)
            at = line.at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
            rows.append(",".join((str(line.record_id or ""), line.type or "", line.status or "", fmt(line.amount),
                                  fmt(balance), at)))
        if not rows:
            return CsvChunk("", 0, None, balance)
        return CsvChunk("\r\n".join(rows) + "\r\n", len(rows), lines[-1].position, balance)
    row = await pool.fetchrow(_CSV_CHUNK, wallet_id, start, end, *_after(after), limit, balance)
    if not row["lines"]:
        return CsvChunk("", 0, None, balance)
    return CsvChunk(row["text"] + "\r\n", row["lines"], Position(row["created_at"], row["entry_id"], row["tx"]),
                    row["balance_after"])


async def wallets_of(pool: FairPool, owner: uuid.UUID, kinds: Sequence[str]) -> list[asyncpg.Record]:
    """The owner's wallets of these kinds (a payment service's: its service and gateway wallet in
    every currency), by currency, then kind in reverse order (service before gateway)."""
    return await pool.fetch(
        f"""SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id
            WHERE w.user_id = $1 AND w.kind = ANY($2::text[]) ORDER BY w.currency_id, w.kind DESC""",
        owner, list(kinds))
