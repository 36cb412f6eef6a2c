"""The sealer keeps the chain's BRIN indexes summarized (migration 0013): every full block range at
the end of postings gets its summary before the next seal, the last, partial one never (inserts
into it would have to update a summary), a range VACUUM holds is left to it, and a database that
refuses summarizing still gets its entries sealed.

Each test has a database of its own, with autovacuum off on postings: only walletd summarizes."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.conftest import create_database, register
from tests.integration.test_integrity_jobs import IDLE
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
