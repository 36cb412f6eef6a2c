"""The schema: concurrent and repeated application, seed data, and the invariants it enforces."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import create_empty_database
from walletd.persistence.migrate import OPERATOR_USER_ID, migrate, schema_ready

TRIGGERS = {"postings_apply", "postings_append_only", "journal_append_only"}


async def snapshot(conn: asyncpg.Connection) -> dict:
    return {
        "currencies": [tuple(r) for r in await conn.fetch("SELECT id, code, name FROM currencies ORDER BY id")],
        "rates": [tuple(r) for r in await conn.fetch(
            "SELECT from_currency_id, to_currency_id, rate FROM exchange_rates ORDER BY 1, 2")],
        "operators": [tuple(r) for r in await conn.fetch("SELECT id, role FROM users WHERE role = 'operator'")],
        "operator_wallets": [tuple(r) for r in await conn.fetch(
            "SELECT id, currency_id FROM wallets WHERE kind = 'operator' ORDER BY currency_id")],
        "triggers": sorted(r[0] for r in await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")),
        "tables": sorted(r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")),
    }


@pytest.fixture
async def fresh(admin_url):
    url = await create_empty_database(admin_url)
    conns = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(url)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        await conn.close()


async def test_workers_applying_the_schema_at_once_all_succeed(fresh):
    conns = [await fresh() for _ in range(6)]
    assert not await schema_ready(conns[0])
    results = await asyncio.gather(*(migrate(c) for c in conns), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await schema_ready(conns[0])
    state = await snapshot(conns[0])
    assert [c[:2] for c in state["currencies"]] == [(1, "USD"), (2, "EUR"), (3, "RUB")]
    assert len(state["rates"]) == 6  # every ordered pair, once
    assert state["operators"] == [(OPERATOR_USER_ID, "operator")]
    assert [w[1] for w in state["operator_wallets"]] == [1, 2, 3]
    assert TRIGGERS <= set(state["triggers"])
    assert len(state["triggers"]) == len(set(state["triggers"]))


async def test_applying_twice_is_harmless_and_keeps_data(fresh):
    conn = await fresh()
    await migrate(conn)
    before = await snapshot(conn)
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "VALUES ($1, 'keeper', 'keeper@example.com', '$argon2id$x', 'user')", user_id)
    await conn.execute("INSERT INTO wallets (id, user_id, currency_id, kind) VALUES ($1, $2, 1, 'user')",
                       uuid.uuid4(), user_id)
    # An operator-corrected rate survives a later migrate (seed inserts never overwrite).
    await conn.execute("UPDATE exchange_rates SET rate = 0.5 WHERE from_currency_id = 1 AND to_currency_id = 2")
    await migrate(conn)
    await migrate(conn)
    after = await snapshot(conn)
    assert after["currencies"] == before["currencies"]
    assert after["operators"] == before["operators"]
    assert after["operator_wallets"] == before["operator_wallets"]  # same ids: not recreated
    assert after["triggers"] == before["triggers"] and after["tables"] == before["tables"]
    assert await conn.fetchval("SELECT count(*) FROM wallets WHERE user_id = $1", user_id) == 1
    assert await conn.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = 1 AND to_currency_id = 2") \
        == Decimal("0.5")
    # The trigger still fires once per statement, not once per application.
    await assert_postings_apply_once(conn)


async def test_concurrent_workers_on_an_already_migrated_database(fresh):
    conns = [await fresh() for _ in range(4)]
    await migrate(conns[0])
    before = await snapshot(conns[0])
    await asyncio.gather(*(migrate(c) for c in conns))
    assert await snapshot(conns[0]) == before


async def assert_postings_apply_once(conn: asyncpg.Connection) -> None:
    wallet = await conn.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1")
    other = await conn.fetchval("SELECT id FROM wallets WHERE kind = 'user' AND currency_id = 1 LIMIT 1")
    before = await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", other)
    entry = uuid.uuid4()
    async with conn.transaction():
        await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
        await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                           "VALUES ($1, $2, 1, 'B', -2), ($1, $3, 1, 'B', 2)", entry, wallet, other)
    assert await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", other) == before + 2


async def test_the_schema_refuses_an_unbalanced_or_edited_journal(fresh):
    conn = await fresh()
    await migrate(conn)
    await migrate(conn)
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "VALUES ($1, 'ledger_user', 'l@example.com', '!', 'user')", user_id)
    await conn.execute("INSERT INTO wallets (id, user_id, currency_id, kind) VALUES ($1, $2, 1, 'user')",
                       uuid.uuid4(), user_id)
    await assert_postings_apply_once(conn)
    operator = await conn.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1")
    target = await conn.fetchval("SELECT id FROM wallets WHERE user_id = $1", user_id)

    entry = uuid.uuid4()
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with conn.transaction():
            await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
            await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                               "VALUES ($1, $2, 1, 'B', -1), ($1, $3, 1, 'B', 2)", entry, operator, target)
    assert await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", target) == 2
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE postings SET amount = amount * 10")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM journal_entries")
    # A user wallet cannot go below zero, even through a balanced entry.
    with pytest.raises(asyncpg.CheckViolationError):
        async with conn.transaction():
            entry = uuid.uuid4()
            await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
            await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                               "VALUES ($1, $2, 1, 'B', 5), ($1, $3, 1, 'B', -5)", entry, operator, target)
    assert await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", target) == 2
