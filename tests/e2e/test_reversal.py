"""POST /service/transaction/reverse (the operator's): one compensating entry, a `reversal` record
both parties see, once per original (the database too refuses a second one), nothing moved when a
credited wallet no longer holds the amount, and the payment service told when it was party."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import (
    OPERATOR,
    OPERATOR_KEY,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    assert_ledger_consistent,
    fund,
    register,
    register_service,
    wallets_snapshot,
)
from tests.oracles import DEPOSIT_RATE, commission_fee
from tests.polling import until


async def reverse(client, transaction_id, headers=None):
    return await client.post("/service/transaction/reverse", params={"transaction_id": str(transaction_id)},
                             headers=OPERATOR if headers is None else headers)


async def balance_of(db, wallet_id) -> Decimal:
    return await db.fetchval("SELECT balance FROM wallets WHERE id = $1", uuid.UUID(str(wallet_id)))


async def history_ids(client, user) -> set[str]:
    body = await (await client.get("/user/transactions", headers=user["headers"])).json()
    return {tx["id"] for tx in body["transactions"]}


async def funded_pair(client):
    service = await register_service(client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    await fund(client, alice, service, 1, "200")
    return service, alice, bob


async def test_a_transfer_is_reversed_by_one_compensating_entry_both_parties_see(client, db):
    _, alice, bob = await funded_pair(client)
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    resp = await api_transfer(client, alice, 1, b, "30.5")
    original = await resp.json()
    before = {w: await balance_of(db, w) for w in (a, b)}
    resp = await reverse(client, original["id"])
    assert resp.status == 200, await resp.text()
    reversal = await resp.json()
    assert {k: reversal[k] for k in ("type", "status", "parent_id", "from_wallet_id", "to_wallet_id", "amount",
                                     "converted_amount", "rate", "user_id")} == {
        "type": "reversal", "status": "close", "parent_id": original["id"], "from_wallet_id": b, "to_wallet_id": a,
        "amount": "30.5000000000", "converted_amount": "30.5000000000", "rate": "1.0000000000",
        "user_id": alice["id"]}
    assert await balance_of(db, a) == before[a] + Decimal("30.5")
    assert await balance_of(db, b) == before[b] - Decimal("30.5")
    entry = await db.fetchrow("SELECT e.kind, e.id FROM journal_entries e JOIN transactions t ON t.entry_id = e.id "
                              "WHERE t.id = $1", uuid.UUID(reversal["id"]))
    assert entry["kind"] == "reversal"
    postings = await db.fetch("SELECT wallet_id::text, bucket, amount FROM postings WHERE entry_id = $1 ORDER BY amount",
                              entry["id"])
    assert [tuple(p) for p in postings] == [(b, "B", Decimal("-30.5")), (a, "B", Decimal("30.5"))]
    assert reversal["id"] in await history_ids(client, alice)
    assert reversal["id"] in await history_ids(client, bob)
    # the original stays as it was: the journal is append-only
    assert (await db.fetchval("SELECT status FROM transactions WHERE id = $1", uuid.UUID(original["id"]))) == "close"
    await assert_ledger_consistent(db)


async def test_one_leg_of_a_multi_leg_transfer_is_reversed_alone(client, db):
    """The legs of a multi-leg transfer share one journal entry: reversing one leg undoes that leg's
    postings only, and the statement shows the reversal as one line of its own."""
    _, alice, bob = await funded_pair(client)
    carol = await register(client, "carol")
    a, b, c = alice["wallets"][1]["id"], bob["wallets"][1]["id"], carol["wallets"][1]["id"]
    resp = await client.post("/wallet/transfers", headers=alice["headers"], json={"transfers": [
        {"source_wallet_id": a, "target_wallet_id": b, "amount": "10"},
        {"source_wallet_id": a, "target_wallet_id": c, "amount": "7"}]})
    assert resp.status == 200, await resp.text()
    to_bob, to_carol = (await resp.json())["transfers"]
    before = {w: await balance_of(db, w) for w in (a, b, c)}
    resp = await reverse(client, to_carol["id"])
    assert resp.status == 200, await resp.text()
    reversal = await resp.json()
    assert (reversal["amount"], reversal["from_wallet_id"], reversal["to_wallet_id"]) == ("7.0000000000", c, a)
    assert {w: await balance_of(db, w) - before[w] for w in (a, b, c)} == {
        a: Decimal("7"), b: Decimal("0"), c: Decimal("-7")}
    statement = await (await client.get("/user/wallet/statement", headers=carol["headers"],
                                         params={"wallet_id": c})).json()
    assert [(e["transaction_id"], e["amount"]) for e in statement["entries"] if e["type"] == "reversal"] == [
        (reversal["id"], "-7.0000000000")]
    # the other leg is still reversible, once
    assert (await reverse(client, to_bob["id"])).status == 200
    assert (await reverse(client, to_bob["id"])).status == 409
    await assert_ledger_consistent(db)


async def test_a_transfer_across_currencies_is_undone_at_its_own_amounts(client, db):
    _, alice, bob = await funded_pair(client)
    desks = await db.fetch("SELECT id, balance FROM wallets WHERE kind = 'operator' ORDER BY currency_id")
    original = await (await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "10")).json()
    assert original["from_currency_id"] != original["to_currency_id"]
    today = Decimal(original["rate"]) / 2  # a new rate, which the reversal must not use
    resp = await client.post("/service/exchange-rates/set", headers=OPERATOR,
                             params={"from_currency": 1, "to_currency": 2, "rate": str(today), "force": "true"})
    assert resp.status == 200, await resp.text()
    reversal = await (await reverse(client, original["id"])).json()
    assert (reversal["amount"], reversal["converted_amount"], reversal["rate"]) == (
        original["converted_amount"], original["amount"], original["rate"])
    assert (reversal["from_currency_id"], reversal["to_currency_id"]) == (2, 1)
    assert await db.fetch("SELECT id, balance FROM wallets WHERE kind = 'operator' ORDER BY currency_id") == desks
    assert await balance_of(db, bob["wallets"][2]["id"]) == 0
    await assert_ledger_consistent(db)


async def test_a_paid_deposit_is_reversed_with_its_commission_and_the_payment_service_is_told(client, db):
    service = await register_service(client)
    carol = await register(client, "carol")
    deposit = await (await api_deposit(client, carol, service, 1, "100")).json()
    assert (await api_settle(client, service, "deposit", deposit["id"], "paid")).status == 200
    wallets = await db.fetch("SELECT kind, id FROM wallets WHERE user_id = $1 AND currency_id = 1",
                             uuid.UUID(service["id"]))
    by_kind = {r["kind"]: r["id"] for r in wallets}
    fee = commission_fee("100", DEPOSIT_RATE)
    assert await balance_of(db, by_kind["service"]) == fee
    resp = await reverse(client, deposit["id"])
    assert resp.status == 200, await resp.text()
    reversal = await resp.json()
    assert (reversal["type"], reversal["parent_id"], reversal["service_user_id"]) == (
        "reversal", deposit["id"], service["id"])
    assert (reversal["from_wallet_id"], reversal["to_wallet_id"]) == (carol["wallets"][1]["id"], str(by_kind["gateway"]))
    assert await balance_of(db, carol["wallets"][1]["id"]) == 0
    assert await balance_of(db, by_kind["service"]) == 0
    assert await balance_of(db, by_kind["gateway"]) == 0
    assert reversal["id"] in await history_ids(client, carol)

    async def event():
        body = await (await client.get("/service/events", headers=service["headers"])).json()
        return [e for e in body["events"] if e["type"] == "transaction.reversed"]
    (told,) = await until(event, what="the transaction.reversed event in the feed")
    assert told["data"] == reversal
    await assert_ledger_consistent(db)


async def test_a_second_reversal_is_409_and_moves_nothing(client, db):
    _, alice, bob = await funded_pair(client)
    original = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5")).json()
    assert (await reverse(client, original["id"])).status == 200
    before = await wallets_snapshot(db)
    resp = await reverse(client, original["id"])
    assert resp.status == 409
    assert (await resp.json())["code"] == "already_reversed"
    assert await wallets_snapshot(db) == before


async def test_concurrent_reversals_from_two_walletd_instances_reverse_once(make_client, db):
    """Two apps (two ledgers, two sets of actors) on one database: only PostgreSQL can decide."""
    first, second = await make_client(), await make_client()
    _, alice, bob = await funded_pair(first)
    originals = [await (await api_transfer(first, alice, 1, bob["wallets"][1]["id"], "2")).json() for _ in range(3)]
    before = await balance_of(db, bob["wallets"][1]["id"])
    answers = await asyncio.gather(*(reverse(c, o["id"]) for o in originals for c in (first, second, first, second)))
    statuses = [r.status for r in answers]
    codes = [(await r.json()).get("code") for r in answers if r.status != 200]
    assert statuses.count(200) == 3 and set(codes) == {"already_reversed"}, statuses
    assert await balance_of(db, bob["wallets"][1]["id"]) == before - 6
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE type = 'reversal' AND parent_id = ANY($1)",
                             [uuid.UUID(o["id"]) for o in originals]) == 3
    await assert_ledger_consistent(db)


async def test_the_database_refuses_a_second_reversal_record(client, db):
    _, alice, bob = await funded_pair(client)
    original = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).json()
    reversal = await (await reverse(client, original["id"])).json()
    with pytest.raises(asyncpg.UniqueViolationError, match="transactions_one_reversal"):
        await db.execute("INSERT INTO transactions (id, type, status, amount, converted_amount, user_id, parent_id) "
                         "SELECT $1, type, status, amount, converted_amount, user_id, parent_id FROM transactions "
                         "WHERE id = $2", uuid.uuid4(), uuid.UUID(reversal["id"]))


async def test_a_reversal_the_credited_wallet_cannot_cover_is_409_and_moves_nothing(client, db):
    _, alice, bob = await funded_pair(client)
    original = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "50")).json()
    dave = await register(client, "dave")
    assert (await api_transfer(client, bob, 1, dave["wallets"][1]["id"], "20")).status == 200  # bob spent some
    before = await wallets_snapshot(db)
    resp = await reverse(client, original["id"])
    assert resp.status == 409
    assert (await resp.json())["code"] == "insufficient_funds"
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE parent_id = $1",
                             uuid.UUID(original["id"])) == 0


async def test_only_completed_transfers_and_paid_deposits_are_reversible(client, db):
    service, alice, bob = await funded_pair(client)
    pending = await (await api_deposit(client, alice, service, 1, "3")).json()
    rejected = await (await api_deposit(client, alice, service, 1, "4")).json()
    await api_settle(client, service, "deposit", rejected["id"], "rejected")
    await api_external_wallet(client, alice, 1)
    withdrawal = await (await api_withdraw(client, alice, service, 1, "5")).json()
    await api_settle(client, service, "withdraw", withdrawal["id"], "paid")
    # alice's commissions are a paid deposit's and a paid withdrawal's: the deposit's, by its parent's type
    parents = [r[0] for r in await db.fetch("SELECT parent_id FROM transactions WHERE type = 'commission' "
                                            "AND user_id = $1", uuid.UUID(alice["id"]))]
    paid_deposit = await db.fetchval("SELECT id FROM transactions WHERE id = ANY($1::uuid[]) AND type = 'deposit' "
                                     "AND status = 'paid' LIMIT 1", parents)
    assert paid_deposit is not None
    parts = [r[0] for r in await db.fetch("SELECT id FROM transactions WHERE parent_id = $1", paid_deposit)]
    original = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).json()
    reversal = await (await reverse(client, original["id"])).json()
    before = await wallets_snapshot(db)
    for transaction_id in [pending["id"], rejected["id"], withdrawal["id"], *parts, reversal["id"]]:
        resp = await reverse(client, transaction_id)
        assert resp.status == 409, transaction_id
        assert (await resp.json())["code"] == "transaction_not_reversible"
    resp = await reverse(client, uuid.uuid4())
    assert (resp.status, (await resp.json())["code"]) == (404, "transaction_not_found")
    assert await wallets_snapshot(db) == before


async def test_only_the_operator_may_reverse(client, db):
    service, alice, bob = await funded_pair(client)
    original = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7")).json()
    before = await wallets_snapshot(db)
    for headers in ({}, {"X-Operator-Key": "wrong"}, {"X-Operator-Key": OPERATOR_KEY + "x"}, bob["headers"],
                    service["headers"], {**alice["headers"], "X-Operator-Key": ""}):
        resp = await reverse(client, original["id"], headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["code"] == "operator_key_required"
    assert await wallets_snapshot(db) == before


async def test_without_an_operator_key_configured_nobody_may_reverse(make_client, db):
    client = await make_client(operator_key=None)
    service = await register(client, "x")  # any credential at all
    resp = await reverse(client, uuid.uuid4(), headers={"X-Operator-Key": "", **service["headers"]})
    assert resp.status == 403 and "closed" in (await resp.json())["message"]


async def test_a_retry_with_the_same_idempotency_key_replays_the_reversal(client, db):
    _, alice, bob = await funded_pair(client)
    original = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "9")).json()
    headers = {**OPERATOR, "Idempotency-Key": f"rev-{uuid.uuid4()}"}
    first = await reverse(client, original["id"], headers=headers)
    again = await reverse(client, original["id"], headers=headers)
    assert (first.status, again.status) == (200, 200)
    assert await first.read() == await again.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await balance_of(db, bob["wallets"][1]["id"]) == 0


async def test_the_audit_names_a_reversal_that_no_longer_undoes_its_original(make_client, admin_url):
    from tests.conftest import create_database
    from walletd.persistence.audit import find_problems

    url = await create_database(admin_url)  # a database of its own: this test breaks it on purpose
    client = await make_client(database_url=url)
    conn = await asyncpg.connect(url)
    try:
        service, alice, bob = await funded_pair(client)
        deposit = await (await api_deposit(client, bob, service, 1, "40")).json()
        assert (await api_settle(client, service, "deposit", deposit["id"], "paid")).status == 200
        transfer = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "8")).json()
        reversals = [await (await reverse(client, tx["id"])).json() for tx in (deposit, transfer)]
        assert await find_problems(conn) == []  # both kinds of reversal are what the audit expects
        deposit_reversal = uuid.UUID(reversals[0]["id"])
        await conn.execute("UPDATE transactions SET amount = amount + 1 WHERE id = $1", deposit_reversal)
        problems = await find_problems(conn)
        assert [p.split(":")[0] for p in problems] == [
            "transaction record disagrees with its journal entry (amount, wallets or status)"], problems
        await conn.execute("UPDATE transactions SET amount = amount - 1 WHERE id = $1", deposit_reversal)
        # a posting of the transfer's reversal moved to another wallet, balances fixed: the record
        # and every balance still agree, but the reversal no longer undoes its original
        entry = await conn.fetchval("SELECT entry_id FROM transactions WHERE id = $1", uuid.UUID(reversals[1]["id"]))
        carol = await register(client, "carol")
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            amount = await conn.fetchval("UPDATE postings SET wallet_id = $1 WHERE entry_id = $2 AND amount > 0 "
                                         "RETURNING amount", uuid.UUID(carol["wallets"][1]["id"]), entry)
            await conn.execute("UPDATE wallets SET balance = balance - $1 WHERE id = $2", amount,
                               uuid.UUID(alice["wallets"][1]["id"]))
            await conn.execute("UPDATE wallets SET balance = balance + $1 WHERE id = $2", amount,
                               uuid.UUID(carol["wallets"][1]["id"]))
        titles = {p.split(":")[0] for p in await find_problems(conn)}
        assert "reversal does not undo its original's entry exactly" in titles, titles
    finally:
        await conn.close()
