"""The sealer keeps the chain's BRIN indexes summarized (migration 0013): every full block range at
the end of postings gets its summary before the next seal, the last, partial one never (inserts
into it would have to update a summary), a range VACUUM holds is left to it, and a database that
refuses summarizing still gets its entries sealed; the sealer's reads go through the ranges even
when the planner's costs favour reading the tables whole (migration 0014).

Each test has a database of its own, with autovacuum off on postings: only walletd summarizes."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.conftest import api_transfer, create_database, register
from tests.integration.test_integrity_jobs import IDLE, alice_funded
from walletd.appkeys import pool_key
from walletd.jobs.journal_sealer import JournalSealer

PAGES_PER_RANGE = 32  # the BRIN indexes' (migration 0011)


@pytest.fixture
async def database_url(admin_url) -> str:
    return await create_database(admin_url)


async def postings_pages(db) -> int:
    return await db.fetchval("SELECT pg_relation_size('postings') / current_setting('block_size')::int")


async def add_postings_until(db, wallet_id: uuid.UUID, pages: int) -> None:
    """Balanced entries written by SQL (+1 and -1 on one wallet, so no balance changes) until postings
    spans `pages` pages: thousands of entries, which HTTP would take minutes to make."""
    while await postings_pages(db) < pages:
        await db.execute("""
            WITH e AS (INSERT INTO journal_entries (id, kind) SELECT gen_random_uuid(), 'transfer'
                         FROM generate_series(1, 500) RETURNING id)
            INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount, created_at, transaction_id)
            SELECT e.id, $1, 1, 'B', side.amount, now(), '00000000-0000-0000-0000-000000000000'
              FROM e, (VALUES (1), (-1)) AS side(amount)""", wallet_id)


async def summarized(db, range_index: int) -> bool:
    """Whether the range has a summary (asking summarizes it when it has none: ask last)."""
    return await db.fetchval("SELECT brin_summarize_range('postings_entry_brin', $1)",
                             range_index * PAGES_PER_RANGE) == 0


async def setup(make_client, db) -> tuple[JournalSealer, uuid.UUID]:
    client = await make_client(**IDLE)
    await db.execute("ALTER TABLE postings SET (autovacuum_enabled = off)")
    alice = await register(client, "alice")
    return (JournalSealer(client.app[pool_key], interval=1, head_log_interval=3600),
            uuid.UUID(alice["wallets"][1]["id"]))


async def test_a_seal_round_summarizes_every_full_range_and_leaves_the_partial_one(make_client, db):
    sealer, wallet = await setup(make_client, db)
    await add_postings_until(db, wallet, 2 * PAGES_PER_RANGE + 5)
    full = await postings_pages(db) // PAGES_PER_RANGE
    assert full >= 2 and await postings_pages(db) % PAGES_PER_RANGE

    assert await sealer.seal_once() > 0
    assert [await summarized(db, r) for r in range(full)] == [True] * full
    assert not await summarized(db, full)


async def test_only_the_ranges_filled_since_the_last_call_are_summarized(make_client, db):
    # The first range has a summary from the start: the index was built on the empty table.
    _, wallet = await setup(make_client, db)
    await add_postings_until(db, wallet, 2 * PAGES_PER_RANGE + 5)
    assert await db.fetchval("SELECT walletd_summarize_chain_ranges()") == 1
    assert await db.fetchval("SELECT walletd_summarize_chain_ranges()") == 0
    await add_postings_until(db, wallet, 4 * PAGES_PER_RANGE + 5)
    assert await db.fetchval("SELECT walletd_summarize_chain_ranges()") == 2
    assert [await summarized(db, r) for r in range(4)] == [True] * 4


async def test_a_range_locked_by_vacuum_is_left_to_it_and_summarized_by_a_later_round(make_client, db, database_url):
    sealer, wallet = await setup(make_client, db)
    await add_postings_until(db, wallet, 2 * PAGES_PER_RANGE + 5)
    vacuum = await asyncpg.connect(database_url)  # holds what VACUUM holds while it summarizes
    try:
        async with vacuum.transaction():
            await vacuum.execute("LOCK TABLE postings IN SHARE UPDATE EXCLUSIVE MODE")
            # gives up after its lock_timeout (0.1 s) instead of waiting for VACUUM; sealing goes on
            assert await asyncio.wait_for(db.fetchval("SELECT walletd_summarize_chain_ranges()"), 30) == 0
            assert await asyncio.wait_for(sealer.seal_once(), 30) > 0
    finally:
        await vacuum.close()
    assert await db.fetchval("SELECT walletd_summarize_chain_ranges()") == 1


async def test_a_database_that_refuses_summarizing_still_gets_its_entries_sealed(make_client, db, log_tap):
    sealer, wallet = await setup(make_client, db)
    await db.execute("""CREATE OR REPLACE FUNCTION walletd_summarize_chain_ranges() RETURNS integer
                        LANGUAGE plpgsql AS $$ BEGIN RAISE insufficient_privilege USING MESSAGE = 'not the owner';
                        END $$""")
    await add_postings_until(db, wallet, 5)
    assert await sealer.seal_once() > 0
    assert await sealer.seal_once() == 0  # nothing new; refused again, not logged again
    refused = [line for line in log_tap.lines if '"journal.summarize_refused"' in line]
    assert len(refused) == 1 and "not the owner" in refused[0]


async def blocks_touched(db) -> int:
    """Heap blocks of postings and transactions read so far, this backend's reads flushed first."""
    await db.execute("SELECT pg_stat_force_next_flush()")
    return await db.fetchval("SELECT sum(heap_blks_read + heap_blks_hit) FROM pg_statio_user_tables "
                             "WHERE relname IN ('postings', 'transactions')")


async def test_the_sealer_reads_through_the_ranges_whatever_the_planner_would_rather_do(make_client, db):
    client, _, alice, bob = await alice_funded(make_client, "100")
    # 120,000 entries with their records, as history bulk-loaded or imported from elsewhere; the
    # second half's ids sort before the first half's, so the ids no longer follow the tables' order.
    for prefix in ("01000000-0000-7000-8000-", "00000000-0000-4000-8000-"):
        await db.execute(f"""
            WITH e AS (INSERT INTO journal_entries (id, kind)
                       SELECT ('{prefix}' || lpad(to_hex(i), 12, '0'))::uuid, 'transfer'
                         FROM generate_series(1, 60000) i RETURNING id),
                 p AS (INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount, created_at,
                                             transaction_id)
                       SELECT e.id, $1, 1, 'B', side.amount, now(), e.id FROM e, (VALUES (1), (-1)) AS side(amount))
            INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, from_user_id, amount,
                                      to_wallet_id, to_currency_id, to_user_id, rate, converted_amount, user_id,
                                      entry_id, created_at, updated_at)
            SELECT e.id, 'transfer', 'close', $1, 1, $2, 1, $1, 1, $2, 1, 1, $2, e.id, now(), now() FROM e""",
                         uuid.UUID(alice["wallets"][1]["id"]), uuid.UUID(alice["id"]))
    for _ in range(20):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    await db.execute("VACUUM (ANALYZE) postings, transactions")  # every full range summarized, as in a live database
    newest = [r[0] for r in await db.fetch("SELECT id FROM journal_entries ORDER BY xid DESC, id LIMIT 20")]
    table_blocks = await db.fetchval("SELECT (pg_relation_size('postings') + pg_relation_size('transactions')) / 8192")
    # Costs under which the planner would rather read both tables whole, as it did in the bench's
    # full set-up (a million history rows, ids out of order): the function must still read the ranges.
    await db.execute("SET random_page_cost = 1000")
    before = await blocks_touched(db)
    bodies = await db.fetch("SELECT * FROM walletd_chain_bodies($1::uuid[])", newest)
    touched = await blocks_touched(db) - before
    assert len(bodies) == 20 and all('"transfer"' in body for _, body in bodies)
    assert touched < table_blocks / 10, (touched, table_blocks)
