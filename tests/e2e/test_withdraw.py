"""Withdrawals: a request holds the amount (balance → reserved_balance); held money cannot be
spent twice; concurrent requests never overdraw; settlement releases or spends the hold."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

from tests.conftest import (
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    wallets_snapshot,
)
from tests.oracles import WITHDRAW_RATE, net_of_commission


async def test_held_money_cannot_be_transferred(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "10")  # 9.9
    await api_external_wallet(client, alice, 1)
    resp = await api_withdraw(client, alice, service, 1, "7")
    assert resp.status == 200, await resp.text()
    assert await balance(client, alice, 1) == (credited - 7, Decimal(7))
    wallet = await (await client.get("/user/wallet", headers=alice["headers"],
                                     params={"wallet_id": alice["wallets"][1]["id"]})).json()
    assert wallet["balance"] == "2.9000000000" and wallet["reserved_balance"] == "7.0000000000"
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3")
    assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
    resp = await api_withdraw(client, alice, service, 1, "3")
    assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "2.9")
    assert resp.status == 200
    assert await balance(client, alice, 1) == (0, Decimal(7))
    await assert_ledger_consistent(db)


async def test_concurrent_withdrawals_never_overdraw(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    await fund(client, alice, service, 2, "10.101010101")  # credits exactly 10
    assert await balance(client, alice, 2) == (Decimal(10), 0)
    await api_external_wallet(client, alice, 2)
    responses = await asyncio.gather(*[api_withdraw(client, alice, service, 2, "1") for _ in range(30)])
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 10 and statuses.count(400) == 20, statuses
    for r in responses:
        if r.status == 400:
            assert (await r.json())["message"] == "insufficient_funds"
    assert await balance(client, alice, 2) == (0, Decimal(10))

    # Settle them all at once: half paid, half rejected.
    ids = [(await r.json())["id"] for r in responses if r.status == 200]
    results = await asyncio.gather(*[api_settle(client, service, "withdraw", tx, "paid" if i % 2 else "rejected")
                                     for i, tx in enumerate(ids)])
    assert [r.status for r in results] == [200] * 10
    assert await balance(client, alice, 2) == (Decimal(5), 0)
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE user_id = $1",
                             alice["id"]) == Decimal("4.9")
    await assert_ledger_consistent(db)


async def test_concurrent_mixed_debits_only_refuse_what_was_unaffordable(client, db):
    """Withdrawals and transfers of random sizes race on one wallet: the successes fit in the
    balance, the final balance is the arithmetic result, and every refused amount is larger
    than what was left at the end (the balance only falls, so no refusal was spurious)."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    start = await fund(client, alice, service, 3, "100")
    await api_external_wallet(client, alice, 3)
    rng = random.Random(7)
    ops = [(rng.choice(["withdraw", "transfer"]), Decimal(rng.randint(1, 900)) / 100) for _ in range(60)]
    calls = [api_withdraw(client, alice, service, 3, amount) if kind == "withdraw"
             else api_transfer(client, alice, 3, bob["wallets"][3]["id"], amount) for kind, amount in ops]
    responses = await asyncio.gather(*calls)
    spent = {"withdraw": Decimal(0), "transfer": Decimal(0)}
    refused = []
    for (kind, amount), resp in zip(ops, responses, strict=False):
        if resp.status == 200:
            spent[kind] += amount
        else:
            assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
            refused.append(amount)
    left = start - spent["withdraw"] - spent["transfer"]
    assert left >= 0 and refused, "the burst was meant to exceed the balance"
    assert await balance(client, alice, 3) == (left, spent["withdraw"])
    assert await balance(client, bob, 3) == (spent["transfer"], 0)
    assert all(amount > left for amount in refused)
    await assert_ledger_consistent(db)


async def test_external_wallet_rules(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    created = await api_external_wallet(client, alice, 1)
    assert created["currency_id"] == 1 and created["user_id"] == alice["id"]
    resp = await client.post("/user/create/external_wallet", headers=alice["headers"],
                             params={"wallet_name": "again", "currency_id": 1})
    assert resp.status == 409
    resp = await client.post("/user/create/external_wallet", headers=alice["headers"],
                             params={"wallet_name": "nowhere", "currency_id": 99})
    assert resp.status == 400 and (await resp.json())["message"] == "currency_not_found"
    # bob has no external wallet of his own; alice's does not count for him.
    await fund(client, bob, service, 1, "10")
    before = await wallets_snapshot(db)
    resp = await api_withdraw(client, bob, service, 1, "1")
    assert resp.status == 400 and (await resp.json())["message"] == "user_ext_wallet_not_found"
    assert await wallets_snapshot(db) == before


async def test_paid_withdrawals_accumulate_on_the_external_wallet(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    await fund(client, alice, service, 1, "1000")
    external = await api_external_wallet(client, alice, 1)
    expected = Decimal(0)
    for amount in ("100", "0.0000000001", "33.3333333333"):
        tx = await (await api_withdraw(client, alice, service, 1, amount)).json()
        assert (await api_settle(client, service, "withdraw", tx["id"], "paid")).status == 200
        expected += net_of_commission(amount, WITHDRAW_RATE)
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE id = $1", external["id"]) == expected
    await assert_ledger_consistent(db)


async def test_withdraw_refusals_move_nothing(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "10")
    await api_external_wallet(client, alice, 1)
    before = await wallets_snapshot(db)
    resp = await client.post("/wallet/withdraw", headers=alice["headers"], params={
        "service_user_id": service["id"], "from_wallet_id": bob["wallets"][1]["id"], "amount": "1"})
    assert resp.status == 400 and (await resp.json())["message"] == "Wrong wallet ID or it is not your wallet ID"
    resp = await api_withdraw(client, alice, {"id": alice["id"]}, 1, "1")
    assert resp.status == 400 and (await resp.json())["message"] == "service_wallet_not_found"
    resp = await api_withdraw(client, alice, service, 1, "10")
    assert resp.status == 400 and (await resp.json())["message"] == "insufficient_funds"
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE type = 'withdraw' AND user_id = $1",
                             alice["id"]) == 0
