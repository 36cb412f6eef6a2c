"""walletd_write_batch(doc jsonb), migration 0005: callable with a hand-written document (as from
psql), arrays left out write nothing, and the settlements' compare-and-set is counted inside."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import assert_ledger_consistent
from walletd.domain.ids import new_id
from walletd.domain.policy import OPERATOR_USER_ID


async def _wallets(db) -> tuple[asyncpg.Record, asyncpg.Record]:
    user_id = uuid.uuid4()
    await db.execute("INSERT INTO users (id, username, email, password_hash, role) VALUES ($1, $2, $3, '!', 'user')",
                     user_id, f"wb_{user_id.hex[:12]}", f"{user_id.hex[:12]}@example.com")
    mine = await db.fetchrow("INSERT INTO wallets (id, user_id, currency_id, kind) VALUES ($1, $2, 1, 'user') "
                             "RETURNING id, currency_id", uuid.uuid4(), user_id)
    desk = await db.fetchrow("SELECT id, currency_id FROM wallets WHERE user_id = $1 AND currency_id = 1 AND kind = 'operator'",
                             OPERATOR_USER_ID)
    return mine, desk


async def test_a_hand_written_document_moves_money_and_omitted_arrays_write_nothing(db):
    mine, desk = await _wallets(db)
    entry_id = new_id()
    doc = {"now": "2026-01-01T00:00:00+00:00",
           "entries": [{"id": str(entry_id), "kind": "bonus", "request_id": "psql"}],
           "postings": [{"entry_id": str(entry_id), "wallet_id": str(desk["id"]), "currency_id": 1, "bucket": "B",
                         "amount": "-2.5"},
                        {"entry_id": str(entry_id), "wallet_id": str(mine["id"]), "currency_id": 1, "bucket": "B",
                         "amount": "2.5"}]}
    assert await db.fetchval("SELECT walletd_write_batch($1::text::jsonb)", json.dumps(doc)) == 0
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", mine["id"]) == Decimal("2.5")
    assert await db.fetchval("SELECT created_at FROM journal_entries WHERE id = $1", entry_id) is not None
    await assert_ledger_consistent(db)


async def test_an_unbalanced_document_is_refused_whole(db):
    mine, _ = await _wallets(db)
    entry_id = new_id()
    doc = {"now": "2026-01-01T00:00:00+00:00", "entries": [{"id": str(entry_id), "kind": "bonus"}],
           "postings": [{"entry_id": str(entry_id), "wallet_id": str(mine["id"]), "currency_id": 1, "bucket": "B",
                         "amount": "1"}]}
    with pytest.raises(asyncpg.CheckViolationError):
        await db.fetchval("SELECT walletd_write_batch($1::text::jsonb)", json.dumps(doc))
    assert await db.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", entry_id) == 0


async def test_settling_a_transaction_no_longer_pending_writes_nothing_of_the_batch(db):
    mine, desk = await _wallets(db)
    user_id = await db.fetchval("SELECT user_id FROM wallets WHERE id = $1", mine["id"])
    tx_id = new_id()
    await db.execute(
        """INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, amount, to_wallet_id,
                                     to_currency_id, converted_amount, user_id)
           VALUES ($1, 'deposit', 'rejected', $2, 1, 1, $3, 1, 1, $4)""", tx_id, desk["id"], mine["id"], user_id)
    other = new_id()
    doc = {"now": "2026-01-01T00:00:00+00:00", "entries": [{"id": str(other), "kind": "bonus"}],
           "postings": [{"entry_id": str(other), "wallet_id": str(desk["id"]), "currency_id": 1, "bucket": "B",
                         "amount": "-1"},
                        {"entry_id": str(other), "wallet_id": str(mine["id"]), "currency_id": 1, "bucket": "B",
                         "amount": "1"}],
           "settled": [{"id": str(tx_id), "status": "paid", "entry_id": None}]}
    with pytest.raises(asyncpg.SerializationError):
        await db.fetchval("SELECT walletd_write_batch($1::text::jsonb)", json.dumps(doc))
    assert await db.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", other) == 0
    assert await db.fetchval("SELECT status FROM transactions WHERE id = $1", tx_id) == "rejected"
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", mine["id"]) == 0


async def _reads_of_transactions(db) -> tuple[int, int]:
    """Whole-table scans of transactions, and index entries read through its primary key."""
    await db.execute("SELECT pg_stat_force_next_flush()")
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return tuple(await db.fetchrow(
        "SELECT t.seq_scan, i.idx_tup_read FROM pg_stat_user_tables t "
        "JOIN pg_stat_user_indexes i ON i.relid = t.relid AND i.indexrelname = 'transactions_pkey' "
        "WHERE t.relname = 'transactions'"))


async def test_a_settlement_batch_finds_its_records_by_primary_key_whatever_its_plan_saw(db):
    """Migration 0012: PL/pgSQL keeps a statement's plan for the session. Planned on a small table,
    the settling UPDATE kept scanning the whole of transactions once the table had grown; now a
    batch reads the records it settles by primary key however the plan was made."""
    mine, desk = await _wallets(db)
    user_id = await db.fetchval("SELECT user_id FROM wallets WHERE id = $1", mine["id"])

    async def pending(count: int) -> list[uuid.UUID]:
        ids = [new_id() for _ in range(count)]
        await db.execute(
            """INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, amount, to_wallet_id,
                                         to_currency_id, converted_amount, user_id)
               SELECT i, 'deposit', 'pending', $2, 1, 1, $3, 1, 1, $4 FROM unnest($1::uuid[]) AS i""",
            ids, desk["id"], mine["id"], user_id)
        return ids

    async def settle(ids: list[uuid.UUID]) -> int:
        doc = {"now": "2026-01-01T00:00:00+00:00", "settled": [{"id": str(i), "status": "rejected"} for i in ids]}
        return await db.fetchval("SELECT walletd_write_batch($1::text::jsonb)", json.dumps(doc))

    for tx_id in await pending(8):  # more calls than PL/pgSQL plans afresh before it keeps a plan
        assert await settle([tx_id]) == 1
    later = await pending(5000)
    scans, keys_read = await _reads_of_transactions(db)
    assert await settle(later[:3]) == 3
    scans_after, keys_read_after = await _reads_of_transactions(db)
    assert scans_after == scans
    assert 3 <= keys_read_after - keys_read < 100  # the batch's ids, not a walk of the 5,008 keys
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE id = ANY($1::uuid[]) AND status = 'rejected'",
                             later[:3]) == 3
