"""Races against one PostgreSQL: no overdraft, no deadlock, no lost update, and money conserved
under a few thousand concurrent random operations, with one and with two app instances (two
pools, two actor registries) writing the same wallets."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from decimal import Decimal

from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.oracles import DEPOSIT_RATE, converted, net_of_commission, seed_rate

TEN = Decimal("1E-10")


async def test_concurrent_transfers_from_one_wallet_never_overdraw(client, db):
    alice = await register(client, "alice")
    others = [await register(client, f"payee{i}") for i in range(3)]
    service = await register_service(client)
    await fund(client, alice, service, 1, "10.101010101")  # credits exactly 10
    assert await balance(client, alice, 1) == (Decimal(10), 0)
    responses = await asyncio.gather(*[
        api_transfer(client, alice, 1, others[i % 3]["wallets"][1 + i % 2]["id"], "1") for i in range(40)])
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 10 and statuses.count(400) == 30, statuses
    assert await balance(client, alice, 1) == (0, 0)
    await assert_ledger_consistent(db)


async def test_two_app_instances_never_overdraw_one_wallet(make_client, db):
    one, two = await make_client(), await make_client()
    alice, bob = await register(one, "alice"), await register(two, "bob")
    service = await register_service(one)
    await fund(one, alice, service, 2, "20.202020202")  # credits exactly 20
    await api_external_wallet(two, alice, 2)
    calls = []
    for i in range(60):
        app = (one, two)[i % 2]
        if i % 3 == 0:
            calls.append(api_withdraw(app, alice, service, 2, "1"))
        else:
            calls.append(api_transfer(app, alice, 2, bob["wallets"][(1, 2, 3)[i % 3]]["id"], "1"))
    responses = await asyncio.gather(*calls)
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 20 and statuses.count(400) == 40, statuses
    for r in responses:
        if r.status == 400:
            assert (await r.json())["message"] == "insufficient_funds"
    withdrawn = sum(1 for i, r in enumerate(responses) if r.status == 200 and i % 3 == 0)
    assert await balance(one, alice, 2) == (0, Decimal(withdrawn))
    await assert_ledger_consistent(db)


async def test_opposite_transfers_never_deadlock(make_client, db):
    """A→B and B→A at once, in one currency and across currencies, from two app instances:
    every transfer succeeds (each side holds enough for all its own), nothing is lost."""
    one, two = await make_client(), await make_client()
    alice, bob = await register(one, "alice"), await register(one, "bob")
    service = await register_service(one)
    for user in (alice, bob):
        for currency in (1, 2):
            await fund(one, user, service, currency, "1000")
    start = {(u["id"], c): (await balance(one, u, c))[0] for u in (alice, bob) for c in (1, 2)}
    calls, plan = [], []
    for i in range(120):
        src, dst = (alice, bob) if i % 2 == 0 else (bob, alice)
        src_cur, dst_cur = ((1, 1), (2, 2), (1, 2), (2, 1))[i % 4]
        amount = Decimal(i % 7 + 1) / 3
        amount = amount.quantize(TEN)
        calls.append(api_transfer((one, two)[(i // 2) % 2], src, src_cur, dst["wallets"][dst_cur]["id"], amount))
        plan.append((src, src_cur, dst, dst_cur, amount))
    responses = await asyncio.wait_for(asyncio.gather(*calls), 60)
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * len(calls), [b for b in bodies if "message" in b][:3]
    expected = dict(start)
    for src, src_cur, dst, dst_cur, amount in plan:
        expected[(src["id"], src_cur)] -= amount
        expected[(dst["id"], dst_cur)] += converted(amount, seed_rate(src_cur, dst_cur))
    for user in (alice, bob):
        for currency in (1, 2):
            assert (await balance(one, user, currency))[0] == expected[(user["id"], currency)]
    await assert_ledger_consistent(db)


async def test_settlements_racing_transfers_lose_nothing(make_client, db):
    """Deposits settled into alice's wallet while she sends money out of it and others send money
    into it, through two app instances: the final balance is exactly the arithmetic result."""
    one, two = await make_client(), await make_client()
    alice = await register(one, "alice")
    friends = [await register(one, f"friend{i}") for i in range(3)]
    service = await register_service(one)
    await fund(one, alice, service, 3, "100")
    for friend in friends:
        await fund(one, friend, service, 3, "100")
    start = (await balance(one, alice, 3))[0]
    pending = [await (await api_deposit(one, alice, service, 3, f"{i + 1}.5")).json() for i in range(20)]
    calls = []
    for i, tx in enumerate(pending):
        calls.append(api_settle((one, two)[i % 2], service, "deposit", tx["id"], "paid"))
        calls.append(api_transfer((two, one)[i % 2], alice, 3, friends[i % 3]["wallets"][3]["id"], "2"))
        calls.append(api_transfer((one, two)[i % 2], friends[i % 3], 3, alice["wallets"][3]["id"], "0.75"))
    responses = await asyncio.gather(*calls)
    assert [r.status for r in responses] == [200] * len(calls), [await r.text() for r in responses if r.status != 200]
    deposited = sum(net_of_commission(f"{i + 1}.5", DEPOSIT_RATE) for i in range(20))
    assert await balance(one, alice, 3) == (start + deposited - 40 + Decimal("15"), 0)
    await assert_ledger_consistent(db)


class Model:
    """The expected balance and hold of every user wallet, updated from each 200 response."""

    def __init__(self) -> None:
        self.balance: dict[str, Decimal] = defaultdict(Decimal)
        self.reserved: dict[str, Decimal] = defaultdict(Decimal)


async def test_conservation_under_load(make_client, db, database_url):
    """A few thousand concurrent random operations over ~70 wallets through two app instances:
    transfers both ways and across currencies, deposits settled paid or rejected, withdrawals
    paid or rejected. Afterwards every user wallet equals the sum of what the 200 responses
    said happened, every currency sums to zero over all wallets, nothing is negative, the
    audit is clean, and no request was answered 5xx."""
    # 24 registrations at once from one address: room for all of them in the password-hash pool.
    roomy = {"pool_size": 5, "hash_queue": 32, "hash_queue_per_address": 32}
    one, two = await make_client(**roomy), await make_client(**roomy)
    apps = (one, two)
    services = [await register_service(one), await register_service(two)]
    users = await asyncio.gather(*[register(apps[i % 2], f"load{i}") for i in range(24)])
    await asyncio.gather(*[fund(apps[i % 2], u, services[i % 2], c, "200")
                           for i, u in enumerate(users) for c in (1, 2, 3)])
    await asyncio.gather(*[api_external_wallet(one, u, c) for u in users for c in (1, 2, 3)])
    model = Model()
    for u in users:
        for c in (1, 2, 3):
            model.balance[u["wallets"][c]["id"]], model.reserved[u["wallets"][c]["id"]] = await balance(one, u, c)

    rng = random.Random(20240601)
    statuses: dict[int, int] = defaultdict(int)
    outcomes: dict[str, int] = defaultdict(int)
    gate = asyncio.Semaphore(48)

    def amount() -> Decimal:
        return (Decimal(rng.randint(1, 2_500_000_000_000)) * TEN).quantize(TEN)  # up to 250

    async def call(coro):
        async with gate:
            resp = await coro
            statuses[resp.status] += 1
            body = await resp.json()
            assert resp.status < 500, body
            return resp.status, body

    async def transfer(app, src, src_cur, dst, dst_cur, value):
        status, body = await call(api_transfer(app, src, src_cur, dst["wallets"][dst_cur]["id"], value))
        if status == 200:
            model.balance[src["wallets"][src_cur]["id"]] -= value
            model.balance[dst["wallets"][dst_cur]["id"]] += converted(value, seed_rate(src_cur, dst_cur))
            outcomes["transfer"] += 1
        else:
            assert status == 400 and body["message"] == "insufficient_funds", body

    async def deposit(app, user, service, currency, value, outcome):
        status, body = await call(api_deposit(app, user, service, currency, value))
        assert status == 200, body
        status, body = await call(api_settle(apps[rng.randrange(2)], service, "deposit", body["id"], outcome))
        assert status == 200, body
        if outcome == "paid":
            model.balance[user["wallets"][currency]["id"]] += net_of_commission(value, DEPOSIT_RATE)
        outcomes[f"deposit_{outcome}"] += 1

    async def withdraw(app, user, service, currency, value, outcome):
        wallet = user["wallets"][currency]["id"]
        status, body = await call(api_withdraw(app, user, service, currency, value))
        if status != 200:
            assert status == 400 and body["message"] == "insufficient_funds", body
            return
        model.balance[wallet] -= value
        model.reserved[wallet] += value
        status, body = await call(api_settle(apps[rng.randrange(2)], service, "withdraw", body["id"], outcome))
        assert status == 200, body
        model.reserved[wallet] -= value
        if outcome == "rejected":
            model.balance[wallet] += value
        outcomes[f"withdraw_{outcome}"] += 1

    tasks = []
    for _ in range(2000):
        app = apps[rng.randrange(2)]
        user = rng.choice(users)
        service = rng.choice(services)
        currency = rng.choice((1, 2, 3))
        roll = rng.random()
        if roll < 0.7:
            other = rng.choice([u for u in users if u is not user])
            dst_cur = currency if rng.random() < 0.6 else rng.choice((1, 2, 3))
            tasks.append(transfer(app, user, currency, other, dst_cur, amount()))
        elif roll < 0.85:
            tasks.append(deposit(app, user, service, currency, amount(), rng.choice(["paid", "paid", "rejected"])))
        else:
            tasks.append(withdraw(app, user, service, currency, amount(), rng.choice(["paid", "rejected"])))
    await asyncio.wait_for(asyncio.gather(*tasks), 120)

    assert not [s for s in statuses if s >= 500], dict(statuses)
    assert outcomes["transfer"] > 300 and statuses[400] > 20, (dict(outcomes), dict(statuses))
    assert all(outcomes[k] > 20 for k in ("deposit_paid", "deposit_rejected", "withdraw_paid", "withdraw_rejected"))
    rows = await db.fetch("SELECT id::text, balance, reserved_balance FROM wallets WHERE id = ANY($1::uuid[])",
                          list(model.balance))
    assert len(rows) == 72
    for wallet_id, stored_balance, stored_reserved in rows:
        assert (stored_balance, stored_reserved) == (model.balance[wallet_id], model.reserved[wallet_id]), wallet_id
    totals = await db.fetch("SELECT currency_id, sum(balance + reserved_balance) FROM wallets GROUP BY 1")
    assert totals and all(total == 0 for _, total in totals), totals
    assert await db.fetchval("SELECT count(*) FROM wallets WHERE reserved_balance < 0 OR "
                             "(balance < 0 AND kind IN ('user', 'service'))") == 0
    await assert_ledger_consistent(db)
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out
