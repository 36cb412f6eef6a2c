"""`walletd audit` finds books that disagree with themselves, each tampered with through SQL the
way only a bug or a hand at the database could: a hold with no pending withdrawal behind it, a
transaction record that says another amount, wallet, currency or status than its journal entry.
Books holding every kind of record walletd writes pass it clean."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import (
    OPERATOR,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    create_database,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.polling import until

RESERVED = "wallet's reserved balance differs from the holds of its pending withdrawals"
RECORD = "transaction record disagrees with its journal entry"
CURRENCY = "transaction names a wallet in another currency"


@pytest.fixture
async def books(admin_url, make_client):
    """A database of its own with every kind of record: transfers in one currency and across two,
    deposits paid and rejected (with their commission), withdrawals pending, paid, rejected (one of
    them by the operator once it went stale), sign-up bonuses."""
    url = await create_database(admin_url)
    client = await make_client(database_url=url, signup_bonus=Decimal(2))
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    await api_external_wallet(client, alice, 1)
    records = {"bonus": await _one(url, "SELECT id FROM transactions WHERE type = 'bonus' LIMIT 1")}
    rejected = await (await api_deposit(client, alice, service, 1, "5")).json()
    assert (await api_settle(client, service, "deposit", rejected["id"], "rejected")).status == 200
    records["deposit"] = await _one(url, "SELECT id FROM transactions WHERE type = 'deposit' AND status = 'paid'")
    records["commission"] = await _one(url, "SELECT id FROM transactions WHERE type = 'commission' LIMIT 1")
    records["transfer"] = (await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "10")).json())["id"]
    records["cross"] = (await (await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "10")).json())["id"]
    for outcome in ("paid", "rejected"):
        tx = await (await api_withdraw(client, alice, service, 1, "3")).json()
        assert (await api_settle(client, service, "withdraw", tx["id"], outcome)).status == 200
    staling = await make_client(database_url=url, pending_ttl_seconds=0.5)
    doomed = await (await api_withdraw(staling, alice, service, 1, "2")).json()
    await until(lambda: _one(url, "SELECT stale_at IS NOT NULL FROM transactions WHERE id = $1",
                             uuid.UUID(doomed["id"])), what="the withdrawal gone stale")
    await staling.close()  # its sweeper would mark the pending withdrawal below stale too
    resp = await api_settle(client, {"headers": OPERATOR}, "withdraw", doomed["id"], "rejected")
    assert resp.status == 200, await resp.text()
    records["pending"] = (await (await api_withdraw(client, alice, service, 1, "4")).json())["id"]
    records["alice"] = alice["wallets"][1]["id"]
    records["bob"] = bob["wallets"][1]["id"]
    conn = await asyncpg.connect(url)
    try:
        yield url, conn, records
    finally:
        await conn.close()


async def _one(url: str, query: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def audit(url: str) -> tuple[int, str]:
    return await run_cli(url, "audit")


async def test_books_with_every_kind_of_record_are_clean(books):
    url, conn, _ = books
    kinds = {tuple(r) for r in await conn.fetch("SELECT DISTINCT type, status FROM transactions")}
    assert kinds == {("transfer", "close"), ("commission", "close"), ("bonus", "close"), ("deposit", "paid"),
                     ("deposit", "rejected"), ("withdraw", "pending"), ("withdraw", "paid"),
                     ("withdraw", "rejected")}
    code, out = await audit(url)
    assert code == 0 and "audit: clean" in out, out


async def test_a_hold_without_a_pending_withdrawal_is_found(books):
    """Money moved from a balance into its hold by a balanced entry: every balance still equals
    its postings, but nothing is pending that the hold could be for."""
    url, conn, records = books
    entry = uuid.uuid4()
    doc = {"now": datetime.now(timezone.utc).isoformat(), "entries": [{"id": str(entry), "kind": "withdraw_hold"}],
           "postings": [{"entry_id": str(entry), "wallet_id": records["alice"], "currency_id": 1, "bucket": b,
                         "amount": a} for b, a in (("B", "-5"), ("R", "5"))]}
    await conn.execute("SELECT walletd_write_batch($1::jsonb)", json.dumps(doc))
    code, out = await audit(url)
    assert code == 1, out
    assert [line for line in out.splitlines() if line.startswith(RESERVED)] == [
        f"{RESERVED}: id={records['alice']}, reserved_balance=9.0000000000, pending_withdrawals=4.0000000000"], out
    assert "differs from its postings" not in out  # the postings say the same as the balances


TAMPERS = {  # record, the SQL, the finding it must cause
    "a transfer's amount": ("transfer", "UPDATE transactions SET amount = amount + 1 WHERE id = $1", RECORD),
    "a conversion's result": ("cross", "UPDATE transactions SET converted_amount = converted_amount * 2 WHERE id = $1",
                              RECORD),
    "a transfer's payee": ("transfer", "UPDATE transactions SET to_wallet_id = $2 WHERE id = $1", RECORD),
    "a transfer's currency": ("transfer", "UPDATE transactions SET to_currency_id = 3 WHERE id = $1", CURRENCY),
    "a commission's amount": ("commission", "UPDATE transactions SET amount = amount / 2 WHERE id = $1", RECORD),
    "a paid deposit's status": ("deposit", "UPDATE transactions SET status = 'rejected' WHERE id = $1", RECORD),
    "a bonus's amount": ("bonus", "UPDATE transactions SET amount = amount + 0.5 WHERE id = $1", RECORD),
    "a pending withdrawal's status": ("pending", "UPDATE transactions SET status = 'rejected' WHERE id = $1", RESERVED),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
async def test_a_record_that_disagrees_with_its_entry_is_found(books, tamper):
    url, conn, records = books
    record, sql, finding = TAMPERS[tamper]
    record_id = uuid.UUID(str(records[record]))
    args = (record_id, uuid.UUID(records["alice"])) if "$2" in sql else (record_id,)
    assert await conn.execute(sql, *args) == "UPDATE 1"
    code, out = await audit(url)
    assert code == 1, out
    found = [line for line in out.splitlines() if line.startswith(finding)]
    assert found, out
    if finding == RESERVED:  # the hold is the wallet's; the record is named by the other check
        assert any(line.startswith(RECORD) and str(record_id) in line for line in out.splitlines()), out
    else:
        assert any(str(record_id) in line for line in found), out


async def test_rows_that_name_what_does_not_exist_are_found(books):
    """A posting in a currency its wallet does not hold and a record naming a wallet that does not
    exist: only a hand at the database (constraints and triggers switched off) writes them."""
    url, conn, records = books
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        posting = await conn.fetchrow(
            "UPDATE postings SET currency_id = 3 WHERE ctid = (SELECT ctid FROM postings WHERE wallet_id = $1 "
            "LIMIT 1) RETURNING entry_id, wallet_id", uuid.UUID(records["alice"]))
        ghost = uuid.uuid4()
        await conn.execute("UPDATE transactions SET to_wallet_id = $2 WHERE id = $1",
                           uuid.UUID(str(records["transfer"])), ghost)
    code, out = await audit(url)
    assert code == 1, out
    lines = out.splitlines()
    assert any(line.startswith("posting names a missing wallet or the wrong currency") and
               str(posting["entry_id"]) in line for line in lines), out
    assert any(line.startswith("transaction names a missing wallet or entry") and
               str(records["transfer"]) in line for line in lines), out
