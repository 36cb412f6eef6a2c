"""Deposits and withdrawals settled by the payment service: exactly once, by the right service
user, with the documented postings and commissions."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_withdraw,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    wallets_snapshot,
)
from tests.oracles import DEPOSIT_RATE, commission_fee


async def service_wallets(db, service: dict, currency: int) -> tuple[str, str]:
    rows = dict(await db.fetch("SELECT kind, id::text FROM wallets WHERE user_id = $1 AND currency_id = $2",
                               service["id"], currency))
    return rows["service"], rows["gateway"]


async def entry_postings(db, transaction_id: str) -> dict:
    rows = await db.fetch("SELECT p.wallet_id::text, p.bucket, p.amount FROM transactions t "
                          "JOIN postings p ON p.entry_id = t.entry_id WHERE t.id = $1", transaction_id)
    return {(r[0], r[1]): r[2] for r in rows}


async def request_deposit(client, user, service, currency, amount) -> dict:
    resp = await api_deposit(client, user, service, currency, amount)
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    assert tx["type"] == "deposit" and tx["status"] == "pending"
    return tx


async def test_deposit_request_moves_nothing_and_paid_books_gateway_user_and_commission(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    svc_wallet, gateway = await service_wallets(db, service, 2)
    before = await wallets_snapshot(db)
    amount = "123.4567890123"
    tx = await request_deposit(client, alice, service, 2, amount)
    assert tx["to_wallet_id"] == alice["wallets"][2]["id"] and tx["amount"] == amount
    assert await wallets_snapshot(db) == before, "a pending deposit moves nothing"

    resp = await api_settle(client, service, "deposit", tx["id"], "paid")
    assert resp.status == 200, await resp.text()
    settled = await resp.json()
    assert settled["id"] == tx["id"] and settled["status"] == "paid" and settled["type"] == "deposit"
    commission = commission_fee(amount, DEPOSIT_RATE)
    assert commission == Decimal("1.2345678901")
    assert await balance(client, alice, 2) == (Decimal(amount) - commission, 0)
    assert await entry_postings(db, tx["id"]) == {
        (gateway, "B"): -Decimal(amount), (alice["wallets"][2]["id"], "B"): Decimal(amount) - commission,
        (svc_wallet, "B"): commission}
    # The records the history shows: the deposit, the credit to the user and the commission.
    children = await db.fetch("SELECT type, status, amount FROM transactions WHERE parent_id = $1 ORDER BY seq",
                              tx["id"])
    assert [tuple(r) for r in children] == [("transfer", "close", Decimal(amount)),
                                            ("commission", "close", commission)]
    await assert_ledger_consistent(db)


async def test_commission_is_rounded_half_even_once(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    svc_wallet, _ = await service_wallets(db, service, 1)
    for amount, expected_fee in [("0.0000000250", "0.0000000002"), ("0.0000000350", "0.0000000004"),
                                 ("0.0000000049", "0.0000000000")]:
        before = await db.fetchval("SELECT balance FROM wallets WHERE id = $1", svc_wallet)
        user_before = (await balance(client, alice, 1))[0]
        tx = await request_deposit(client, alice, service, 1, amount)
        assert (await api_settle(client, service, "deposit", tx["id"], "paid")).status == 200
        assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", svc_wallet) - before == \
            Decimal(expected_fee)
        assert (await balance(client, alice, 1))[0] - user_before == Decimal(amount) - Decimal(expected_fee)
    await assert_ledger_consistent(db)


async def test_twenty_concurrent_paid_settlements_credit_once(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    tx = await request_deposit(client, alice, service, 1, "50")
    responses = await asyncio.gather(*[api_settle(client, service, "deposit", tx["id"], "paid") for _ in range(20)])
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 20, bodies
    assert all(body == bodies[0] for body in bodies), "every repeat answers the same record"
    assert bodies[0]["status"] == "paid"
    assert await balance(client, alice, 1) == (Decimal("49.5"), 0)
    assert await db.fetchval("SELECT count(*) FROM postings p JOIN transactions t ON t.entry_id = p.entry_id "
                             "WHERE t.id = $1", tx["id"]) == 3
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE parent_id = $1", tx["id"]) == 2
    # A repeat long after answers the same record too.
    late = await api_settle(client, service, "deposit", tx["id"], "paid")
    assert late.status == 200 and await late.json() == bodies[0]
    await assert_ledger_consistent(db)


async def test_conflicting_settlement_is_409_and_moves_nothing(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    tx = await request_deposit(client, alice, service, 1, "10")
    assert (await api_settle(client, service, "deposit", tx["id"], "paid")).status == 200
    before = await wallets_snapshot(db)
    for status in ("rejected", "reject"):
        resp = await api_settle(client, service, "deposit", tx["id"], status)
        assert resp.status == 409, await resp.text()
        assert (await resp.json())["message"] == "transaction_already_settled"
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT status FROM transactions WHERE id = $1", tx["id"]) == "paid"


async def test_reject_synonym_moves_nothing_and_is_final(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    tx = await request_deposit(client, alice, service, 3, "10")
    before = await wallets_snapshot(db)
    resp = await api_settle(client, service, "deposit", tx["id"], "reject")
    assert resp.status == 200, await resp.text()
    rejected = await resp.json()
    assert rejected["status"] == "rejected" and rejected["id"] == tx["id"]
    again = await api_settle(client, service, "deposit", tx["id"], "rejected")
    assert again.status == 200 and await again.json() == rejected
    paid = await api_settle(client, service, "deposit", tx["id"], "paid")
    assert paid.status == 409
    assert await wallets_snapshot(db) == before


async def test_only_the_named_service_user_may_settle(client, db):
    alice = await register(client, "alice")
    service, intruder = await register_service(client), await register_service(client)
    tx = await request_deposit(client, alice, service, 1, "10")
    before = await wallets_snapshot(db)
    resp = await api_settle(client, intruder, "deposit", tx["id"], "paid")
    assert resp.status == 404 and (await resp.json())["message"] == "transaction_not_found"
    # A user token is not a service token.
    resp = await client.put("/service/transaction/deposit", headers=alice["headers"],
                            params={"transaction_id": tx["id"], "new_status": "paid"})
    assert resp.status == 401
    # Unknown transaction, wrong endpoint for the type, unknown status.
    resp = await api_settle(client, service, "deposit", "00000000-0000-4000-8000-000000000000", "paid")
    assert resp.status == 404
    resp = await api_settle(client, service, "withdraw", tx["id"], "paid")
    assert resp.status == 400 and (await resp.json())["message"] == "invalid_type_transaction"
    resp = await api_settle(client, service, "deposit", tx["id"], "close")
    assert resp.status == 422
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT status FROM transactions WHERE id = $1", tx["id"]) == "pending"
    assert (await api_settle(client, service, "deposit", tx["id"], "paid")).status == 200


async def test_withdraw_holds_then_paid_pays_out_net_of_commission(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    svc_wallet, gateway = await service_wallets(db, service, 1)
    credited = await fund(client, alice, service, 1, "100")
    external = await api_external_wallet(client, alice, 1)
    assert external["amount_withdraw"] == "0.0000000000"
    resp = await api_withdraw(client, alice, service, 1, "50")
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    assert tx["type"] == "withdraw" and tx["status"] == "pending" and tx["from_wallet_id"] == alice["wallets"][1]["id"]
    assert await balance(client, alice, 1) == (credited - 50, Decimal(50))
    svc_before = await db.fetchval("SELECT balance FROM wallets WHERE id = $1", svc_wallet)
    gw_before = await db.fetchval("SELECT balance FROM wallets WHERE id = $1", gateway)

    resp = await api_settle(client, service, "withdraw", tx["id"], "paid")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "paid"
    assert await balance(client, alice, 1) == (credited - 50, 0)
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", svc_wallet) - svc_before == Decimal(1)
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", gateway) - gw_before == Decimal(49)
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE id = $1", external["id"]) == 49
    assert await entry_postings(db, tx["id"]) == {
        (alice["wallets"][1]["id"], "R"): Decimal(-50), (svc_wallet, "B"): Decimal(1), (gateway, "B"): Decimal(49)}
    again = await api_settle(client, service, "withdraw", tx["id"], "paid")
    assert again.status == 200
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE id = $1", external["id"]) == 49
    assert (await api_settle(client, service, "withdraw", tx["id"], "rejected")).status == 409
    await assert_ledger_consistent(db)


async def test_withdraw_rejected_returns_the_hold(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    credited = await fund(client, alice, service, 2, "10")
    external = await api_external_wallet(client, alice, 2)
    # The whole available balance may be withdrawn.
    tx = await (await api_withdraw(client, alice, service, 2, credited)).json()
    assert await balance(client, alice, 2) == (0, credited)
    resp = await api_withdraw(client, alice, service, 2, "0.0000000001")
    assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
    resp = await api_settle(client, service, "withdraw", tx["id"], "rejected")
    assert resp.status == 200 and (await resp.json())["status"] == "rejected"
    assert await balance(client, alice, 2) == (credited, 0)
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE id = $1", external["id"]) == 0
    assert (await api_settle(client, service, "withdraw", tx["id"], "paid")).status == 409
    assert await balance(client, alice, 2) == (credited, 0)
    await assert_ledger_consistent(db)


async def test_withdraw_without_an_external_wallet_is_refused(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    await fund(client, alice, service, 3, "10")
    await api_external_wallet(client, alice, 1)  # another currency's does not count
    before = await wallets_snapshot(db)
    resp = await api_withdraw(client, alice, service, 3, "5")
    assert resp.status == 400 and (await resp.json())["message"] == "user_ext_wallet_not_found"
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE type = 'withdraw' AND user_id = $1",
                             alice["id"]) == 0


async def test_configured_commission_rates_are_used(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    svc_wallet, gateway = await service_wallets(db, service, 3)
    resp = await client.post("/service/commission-rates", headers=service["headers"],
                             params={"currency_id": 3, "deposit_rate": "0.05", "withdraw_rate": "0.075"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["deposit_rate"] == "0.0500000000"
    listed = await (await client.get("/service/commission-rates", headers=service["headers"])).json()
    by_currency = {r["currency_id"]: r for r in listed["commission_rates"]}
    assert by_currency[3]["withdraw_rate"] == "0.0750000000" and by_currency[1]["deposit_rate"] == "0.0100000000"

    tx = await request_deposit(client, alice, service, 3, "200")
    assert (await api_settle(client, service, "deposit", tx["id"], "paid")).status == 200
    assert await balance(client, alice, 3) == (Decimal(190), 0)
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", svc_wallet) == 10
    await api_external_wallet(client, alice, 3)
    tx = await (await api_withdraw(client, alice, service, 3, "80")).json()
    assert (await api_settle(client, service, "withdraw", tx["id"], "paid")).status == 200
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", svc_wallet) == 16
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", gateway) == -200 + 74
    assert await balance(client, alice, 3) == (Decimal(110), 0)
    # Another currency keeps the defaults.
    tx = await request_deposit(client, alice, service, 1, "100")
    assert (await api_settle(client, service, "deposit", tx["id"], "paid")).status == 200
    assert await balance(client, alice, 1) == (Decimal(99), 0)
    await assert_ledger_consistent(db)


async def test_deposit_to_a_service_that_does_not_exist_or_a_foreign_wallet(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    before = await wallets_snapshot(db)
    resp = await api_deposit(client, alice, {"id": bob["id"]}, 1, "5")  # a user is not a payment service
    assert resp.status == 400 and (await resp.json())["message"] == "service_wallet_not_found"
    resp = await client.post("/wallet/deposit", headers=alice["headers"], params={
        "service_user_id": service["id"], "wallet_id": bob["wallets"][1]["id"], "amount": "5"})
    assert resp.status == 400 and (await resp.json())["message"] == "Wrong wallet ID or it is not your wallet ID"
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1", alice["id"]) == 0
