"""The hash chain's storage: sealing (the schema's walletd_seal_journal) and reading seals and the
entries they name, so walletd/domain/chain.py can check them.

Reads go by entry id a few thousand at a time: entries by primary key, their postings and records
through the BRIN indexes on entry_id, bounded by the lowest and highest id asked for (ids are
time-ordered, so that range is a few block ranges at the table's end).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain.chain import Entry, Seal
from walletd.domain.vocabulary import Bucket, EntryKind

SEAL_BATCH = 1000  # entries per sealing transaction
# The previous release's expiry: the operator may still reconcile its record, and rejecting it
# changes the record without a new entry, so the chain leaves that record out (as the sealer does).
OUTSIDE_RECORDS = EntryKind.WITHDRAW_EXPIRED
READ_BATCH = 2000  # seals checked per read


@dataclass(frozen=True)
class Head:
    seq: int
    hash: bytes
    entry_id: uuid.UUID


@dataclass(frozen=True)
class SealRound:
    sealed: int
    head: Head | None


async def seal_pending(conn, max_entries: int = SEAL_BATCH) -> SealRound:
    """Seals up to max_entries of the oldest unsealed entries below the horizon; sealed is 0 when
    another process holds the sealer's lock or nothing is due."""
    row = await conn.fetchrow("SELECT * FROM walletd_seal_journal($1)", max_entries)
    head = Head(row["head_seq"], bytes(row["head_hash"]), row["head_entry_id"]) if row["head_seq"] else None
    return SealRound(row["sealed"], head)


async def summarize_new_ranges(conn) -> int:
    """Summarizes the full BRIN block ranges added to postings and transactions since the last call
    (migration 0013), so the sealer's and the self-audit's reads by entry id skip them; returns how
    many it summarized."""
    return await conn.fetchval("SELECT walletd_summarize_chain_ranges()")


async def seals_after(conn, after_seq: int, limit: int = READ_BATCH) -> list[Seal]:
    rows = await conn.fetch("SELECT seq, entry_id, entry_xid::text::bigint, prev_hash, hash FROM journal_seals "
                            "WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit)
    return [Seal(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in rows]


async def seal_at(conn, seq: int) -> Seal | None:
    r = await conn.fetchrow("SELECT seq, entry_id, entry_xid::text::bigint, prev_hash, hash FROM journal_seals "
                            "WHERE seq = $1", seq)
    return Seal(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) if r else None


_TIME = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_ENTRIES = f"""
SELECT id, xid::text::bigint, kind, request_id, {_TIME.format('created_at')} FROM journal_entries
 WHERE id = ANY($1::uuid[])"""
# Each posting's and record's canonical item, built by this query (the same text the sealer builds,
# but not by its stored function). The join with the wanted ids keeps `= ANY` out of the BRIN scan.
_POSTINGS = """
SELECT p.entry_id, format('["%s","%s","%s","%s"]', p.wallet_id, p.currency_id, p.bucket, p.amount)
  FROM postings p JOIN unnest($1::uuid[]) AS wanted(id) ON wanted.id = p.entry_id
 WHERE p.entry_id BETWEEN $2 AND $3"""
# DISTINCT: on Citus a record between two users is stored once per side; identical copies are one
# record, a copy that differs reads as an altered entry (ids make every record's item distinct).
_RECORDS = f"""
SELECT DISTINCT t.entry_id,
       format('["%s","%s","%s",%s,%s,%s,"%s",%s,%s,%s,"%s","%s","%s",%s,%s,%s,"%s",%s,%s,%s]',
              t.id, t.type, t.status, coalesce('"' || t.from_wallet_id || '"', 'null'),
              coalesce('"' || t.from_currency_id || '"', 'null'), coalesce('"' || t.from_user_id || '"', 'null'),
              t.amount, coalesce('"' || t.to_wallet_id || '"', 'null'),
              coalesce('"' || t.to_currency_id || '"', 'null'), coalesce('"' || t.to_user_id || '"', 'null'),
              t.rate, t.converted_amount, t.user_id, coalesce('"' || t.service_user_id || '"', 'null'),
              coalesce('"' || t.external_wallet_id || '"', 'null'), coalesce('"' || t.parent_id || '"', 'null'),
              {_TIME.format('t.created_at')}, coalesce('"' || t.commission_rate || '"', 'null'),
              coalesce('"' || t.commission || '"', 'null'), coalesce('"' || t.settled_by || '"', 'null'))
  FROM transactions t JOIN unnest($1::uuid[]) AS wanted(id) ON wanted.id = t.entry_id
 WHERE t.entry_id BETWEEN $2 AND $3 AND t.status <> 'pending'"""


async def read_entries(conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, Entry]:
    """These journal entries with their postings and their records (those no longer pending); an id
    with no entry is simply absent. Needs PLAN_FOR_READS in the caller's transaction (see
    `reading`): the id range looks tiny to the planner, which then probes the id list per row."""
    if not ids:
        return {}
    entries = {r[0]: Entry(r[0], r[1], r[2], r[3], r[4]) for r in await conn.fetch(_ENTRIES, ids)}
    if not entries:
        return {}
    found = sorted(entries)
    low, high = found[0], found[-1]
    for r in await conn.fetch(_POSTINGS, found, low, high):
        entries[r[0]].postings.append(r[1])
    for r in await conn.fetch(_RECORDS, found, low, high):
        entry = entries[r[0]]
        if entry.kind != OUTSIDE_RECORDS:
            entry.records.append(r[1])
    return entries


async def posting_sums(conn, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Decimal, Decimal]]:
    """Per wallet, what these entries' postings add to its balance and to its reserved balance."""
    if not ids:
        return {}
    found = sorted(ids)
    return {r[0]: (r[1], r[2]) for r in await conn.fetch(_SUMS, found, found[0], found[-1])}


async def unbalanced(conn, ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
    """(entry, currency) of these entries whose postings do not sum to zero in that currency."""
    if not ids:
        return []
    found = sorted(ids)
    return [(r[0], r[1]) for r in await conn.fetch(_UNBALANCED, found, found[0], found[-1])]


_OF_ENTRIES = """FROM postings p JOIN unnest($1::uuid[]) AS wanted(id) ON wanted.id = p.entry_id
 WHERE p.entry_id BETWEEN $2 AND $3"""
_SUMS = f"""
SELECT p.wallet_id, coalesce(sum(p.amount) FILTER (WHERE p.bucket = '{Bucket.BALANCE}'), 0),
       coalesce(sum(p.amount) FILTER (WHERE p.bucket = '{Bucket.RESERVED}'), 0)
  {_OF_ENTRIES} GROUP BY p.wallet_id"""
_UNBALANCED = f"""
SELECT p.entry_id, p.currency_id {_OF_ENTRIES} GROUP BY p.entry_id, p.currency_id HAVING sum(p.amount) <> 0"""


# For the reads by entry id (read_entries, posting_sums, unbalanced), inside the caller's transaction:
# no nested loops (see read_entries), and no parallel workers: these reads are background work, and
# workers spread it over the cores the requests need (the self-audit's reads started two or three
# workers each during a settlement burst; pg_stat_activity, 2026-12-05).
PLAN_FOR_READS = "SET LOCAL enable_nestloop = off; SET LOCAL max_parallel_workers_per_gather = 0"


@contextlib.asynccontextmanager
async def reading(conn, isolation: str = "read_committed"):
    """A read-only transaction planned for read_entries (SET LOCAL ends with it)."""
    async with conn.transaction(isolation=isolation, readonly=True):
        await conn.execute(PLAN_FOR_READS)
        yield conn


_UNSEALED_BEFORE = """
SELECT e.id, e.xid::text::bigint FROM journal_entries e
 WHERE (e.xid, e.id) <= ($1::text::xid8, $2::uuid)
   AND NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.entry_id = e.id)
 ORDER BY e.xid, e.id LIMIT $3"""
_SEAL_BEFORE = """
SELECT coalesce(max(seq), 0) FROM journal_seals WHERE (entry_xid, entry_id) < ($1::text::xid8, $2::uuid)"""


async def inserted_entries(conn, last: Seal, limit: int = 100) -> list[tuple[uuid.UUID, int]]:
    """Entries inside the sealed part of the chain's order that no seal names, each with the seq of
    the seal it would follow. The sealer never leaves one behind (it seals in that order, and every
    transaction still running writes above its horizon), so each is an entry inserted afterwards."""
    rows = await conn.fetch(_UNSEALED_BEFORE, str(last.entry_xid), last.entry_id, limit)
    return [(r[0], await conn.fetchval(_SEAL_BEFORE, str(r[1]), r[0])) for r in rows]


async def unsealed_count(conn, last: Seal | None) -> int:
    if last is None:
        return await conn.fetchval("SELECT count(*) FROM journal_entries")
    return await conn.fetchval("SELECT count(*) FROM journal_entries WHERE (xid, id) > ($1::text::xid8, $2::uuid)",
                               str(last.entry_xid), last.entry_id)


async def seq_of_hash(conn, hash_: bytes) -> int | None:
    return await conn.fetchval("SELECT seq FROM journal_seals WHERE hash = $1 ORDER BY seq LIMIT 1", hash_)
