"""Transfers and the double-entry journal: real HTTP, real PostgreSQL.

Every movement is one journal entry whose postings sum to zero per currency; wallet balances
equal the sum of their postings; the journal refuses UPDATE and DELETE; `walletd audit` is
clean on a healthy ledger and names the wallet of a corrupted one.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    assert_ledger_consistent,
    balance,
    create_database,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.oracles import converted

TEN = Decimal("1E-10")


async def postings_of(db, transaction_id: str) -> dict:
    rows = await db.fetch(
        """SELECT p.wallet_id::text, p.bucket, p.amount FROM transactions t JOIN postings p ON p.entry_id = t.entry_id
            WHERE t.id = $1""", transaction_id)
    return {(r[0], r[1]): r[2] for r in rows}


async def stored_rate(db, src: int, dst: int) -> Decimal:
    return await db.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = $1 AND to_currency_id = $2",
                             src, dst)


async def desk(db, currency: int) -> str:
    return await db.fetchval("SELECT id::text FROM wallets WHERE kind = 'operator' AND currency_id = $1", currency)


async def test_same_currency_transfer_moves_exactly_the_amount(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "100")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "12.3456789012")
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    assert tx["type"] == "transfer" and tx["status"] == "close"
    assert tx["amount"] == "12.3456789012" and tx["converted_amount"] == "12.3456789012"
    assert tx["rate"] == "1.0000000000"
    assert tx["from_wallet_id"] == alice["wallets"][1]["id"] and tx["to_wallet_id"] == bob["wallets"][1]["id"]
    assert tx["from_currency_id"] == 1 and tx["to_currency_id"] == 1 and tx["user_id"] == alice["id"]
    assert await balance(client, alice, 1) == (credited - Decimal("12.3456789012"), 0)
    assert await balance(client, bob, 1) == (Decimal("12.3456789012"), 0)
    assert await postings_of(db, tx["id"]) == {
        (alice["wallets"][1]["id"], "B"): Decimal("-12.3456789012"),
        (bob["wallets"][1]["id"], "B"): Decimal("12.3456789012"),
    }


@pytest.mark.parametrize("src, dst", [(1, 2), (2, 3), (3, 1)])
async def test_cross_currency_transfer_goes_through_the_exchange_desk(client, db, src, dst):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, src, "1000")
    before_alice, before_bob = await balance(client, alice, src), await balance(client, bob, dst)
    rate = await stored_rate(db, src, dst)
    amount = Decimal("7.7777777777")
    resp = await api_transfer(client, alice, src, bob["wallets"][dst]["id"], amount)
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    credited = converted(amount, rate)
    assert Decimal(tx["rate"]) == rate and Decimal(tx["converted_amount"]) == credited
    assert tx["from_currency_id"] == src and tx["to_currency_id"] == dst
    assert await balance(client, alice, src) == (before_alice[0] - amount, 0)
    assert await balance(client, bob, dst) == (before_bob[0] + credited, 0)
    assert await postings_of(db, tx["id"]) == {
        (alice["wallets"][src]["id"], "B"): -amount, (await desk(db, src), "B"): amount,
        (await desk(db, dst), "B"): -credited, (bob["wallets"][dst]["id"], "B"): credited,
    }
    await assert_ledger_consistent(db)


async def test_whole_balance_may_be_sent_but_not_a_unit_more(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    credited = await fund(client, alice, service, 2, "10")
    resp = await api_transfer(client, alice, 2, bob["wallets"][2]["id"], credited + TEN)
    assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
    assert await balance(client, alice, 2) == (credited, 0)
    resp = await api_transfer(client, alice, 2, bob["wallets"][2]["id"], credited)
    assert resp.status == 200, await resp.text()
    assert await balance(client, alice, 2) == (0, 0)
    resp = await api_transfer(client, alice, 2, bob["wallets"][2]["id"], TEN)
    assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
    assert await balance(client, bob, 2) == (credited, 0)


async def test_transfer_parameters_in_a_json_body_with_a_number_amount(client):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "5")
    body = ('{"source_wallet_id": "%s", "target_wallet_id": "%s", "amount": 0.1000000000001}'
            % (alice["wallets"][1]["id"], bob["wallets"][1]["id"]))
    resp = await client.post("/wallet/transfer", headers={**alice["headers"], "Content-Type": "application/json"},
                             data=body)
    assert resp.status == 200, await resp.text()
    # Parsed exactly (never through float) and rounded half-even to 10 places.
    assert (await resp.json())["amount"] == "0.1000000000"
    assert await balance(client, bob, 1) == (Decimal("0.1"), 0)


async def test_transfer_between_own_wallets_of_different_currencies(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    await fund(client, alice, service, 3, "500")
    resp = await api_transfer(client, alice, 3, alice["wallets"][1]["id"], "185")
    assert resp.status == 200, await resp.text()
    expected = converted(185, await stored_rate(db, 3, 1))
    assert await balance(client, alice, 1) == (expected, 0)


async def mixed_operations(client) -> None:
    """Deposits paid and rejected, withdrawals paid and rejected, transfers in and across currencies."""
    users = [await register(client, f"mix{i}") for i in range(3)]
    service = await register_service(client)
    for user in users:
        for currency in (1, 2, 3):
            await fund(client, user, service, currency, "1000.123456789")
            await api_external_wallet(client, user, currency)
    tx = await (await api_deposit(client, users[0], service, 1, "55")).json()
    assert (await api_settle(client, service, "deposit", tx["id"], "rejected")).status == 200
    for i, (src, dst) in enumerate([(1, 1), (1, 2), (2, 3), (3, 1), (2, 2)]):
        resp = await api_transfer(client, users[i % 3], src, users[(i + 1) % 3]["wallets"][dst]["id"],
                                  f"{i + 1}.0000000007")
        assert resp.status == 200, await resp.text()
    for i, status in enumerate(["paid", "rejected", "paid"]):
        resp = await api_withdraw(client, users[i], service, i + 1, "33.3333333333")
        assert resp.status == 200, await resp.text()
        resp = await api_settle(client, service, "withdraw", (await resp.json())["id"], status)
        assert resp.status == 200, await resp.text()
    pending = await api_withdraw(client, users[1], service, 1, "1.5")
    assert pending.status == 200, await pending.text()


async def test_journal_balances_and_wallets_equal_their_postings(client, db, database_url):
    await mixed_operations(client)
    await assert_ledger_consistent(db)
    kinds = {r[0] for r in await db.fetch("SELECT DISTINCT kind FROM journal_entries")}
    assert {"deposit", "transfer", "withdraw_hold", "withdraw", "withdraw_release"} <= kinds
    held = await db.fetchval("SELECT sum(reserved_balance) FROM wallets")
    assert held == Decimal("1.5"), "only the unsettled withdrawal is still held"
    code, out = await run_cli(database_url, "audit")
    assert code == 0, out
    assert "audit: clean" in out


APPEND_ONLY_VIOLATIONS = [
    "UPDATE postings SET amount = amount * 2",
    "DELETE FROM postings",
    "TRUNCATE postings",
    "UPDATE journal_entries SET kind = 'forged'",
    "DELETE FROM journal_entries",
    "TRUNCATE journal_entries CASCADE",
]


async def test_journal_is_append_only(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "10")
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    before = (await db.fetch("SELECT * FROM postings ORDER BY entry_id, wallet_id, bucket"),
              await db.fetch("SELECT * FROM journal_entries ORDER BY id"))
    assert before[0] and before[1]
    for statement in APPEND_ONLY_VIOLATIONS:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    after = (await db.fetch("SELECT * FROM postings ORDER BY entry_id, wallet_id, bucket"),
             await db.fetch("SELECT * FROM journal_entries ORDER BY id"))
    assert after == before


async def test_an_unbalanced_entry_is_refused_by_the_database(client, db):
    alice = await register(client, "alice")
    before = await db.fetch("SELECT id, balance, reserved_balance FROM wallets ORDER BY id")
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    wallet = alice["wallets"][1]["id"]
    cases = [
        ("does not balance", "($1, $2, 1, 'B', 5)"),  # money from nowhere
        # Balanced, but spends a hold that does not exist: reserved_balance would go negative.
        (None, "($1, $2, 1, 'B', 5), ($1, $2, 1, 'R', -5)"),
    ]
    for message, values in cases:
        with pytest.raises(asyncpg.CheckViolationError, match=message):
            async with db.transaction():  # rolled back when the insert fails
                entry = await db.fetchval(
                    "INSERT INTO journal_entries (id, kind) VALUES (gen_random_uuid(), 'probe') RETURNING id")
                await db.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                                 f"VALUES {values}", entry, wallet)
    assert await db.fetch("SELECT id, balance, reserved_balance FROM wallets ORDER BY id") == before
    assert await db.fetchval("SELECT count(*) FROM journal_entries") == entries


async def test_audit_names_a_corrupted_wallet(make_client, admin_url):
    url = await create_database(admin_url)  # a database of its own: this test breaks it on purpose
    client = await make_client(database_url=url)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "20")
    assert (await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "3")).status == 200
    code, out = await run_cli(url, "audit")
    assert code == 0 and "audit: clean" in out, out

    conn = await asyncpg.connect(url)
    try:
        victim = bob["wallets"][2]["id"]
        await conn.execute("UPDATE wallets SET balance = balance + 1 WHERE id = $1", victim)
        code, out = await run_cli(url, "audit")
        assert code != 0, out
        assert victim in out and "wallet balance differs from its postings" in out
        assert "currency total is not zero" in out
        await conn.execute("UPDATE wallets SET balance = balance - 1 WHERE id = $1", victim)
        code, out = await run_cli(url, "audit")
        assert code == 0, out

        # A posting slipped past the trigger: the wallet no longer matches its postings and the
        # entry does not balance.
        await conn.execute("ALTER TABLE postings DISABLE TRIGGER postings_apply")
        entry = await conn.fetchval("SELECT entry_id FROM postings WHERE wallet_id = $1 LIMIT 1",
                                    alice["wallets"][1]["id"])
        await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                           "VALUES ($1, $2, 1, 'B', 2)", entry, alice["wallets"][1]["id"])
        await conn.execute("ALTER TABLE postings ENABLE TRIGGER postings_apply")
        code, out = await run_cli(url, "audit")
        assert code != 0, out
        assert alice["wallets"][1]["id"] in out and "journal entry does not balance" in out and str(entry) in out

        # An entry whose postings never arrived: nothing moved, but the journal claims a movement.
        empty = uuid.uuid4()
        await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'transfer')", empty)
        code, out = await run_cli(url, "audit")
        assert code != 0 and f"journal entry has no postings: id={empty}" in out, out
    finally:
        await conn.close()
