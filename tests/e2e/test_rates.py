"""Exchange rates from a provider (a fake exchangeratesapi.io served on 127.0.0.1 by the test),
conversion, stale-rate refusal, the quote/transfer identity, and the sign-up bonus. Rates are
written by the operator (X-Operator-Key); the tests of this module share one database and run in
any order, so a pull that does not test the change rule sends force=true (the round-trip rule
holds whatever force says). The authority rules themselves are in test_rate_rules.py."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from decimal import Decimal

from tests.conftest import (
    OPERATOR,
    api_transfer,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    run_cli,
    wallets_snapshot,
)
from tests.oracles import converted, cross_rate

FORCE = {"force": "true"}


async def stored(db, a: int, b: int) -> Decimal:
    return await db.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = $1 AND to_currency_id = $2",
                             a, b)


async def test_update_pulls_latest_and_derives_cross_rates_through_the_base(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    service = await register_service(client)
    provider["latest"]["timestamp"] = stamp = int(time.time()) - 5
    resp = await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    rates = provider["latest"]["rates"]
    # Every ordered pair of the currencies both sides know: 3 seeded ones give 6, and one added by
    # another test of this module (the tests run in any order) gives 12.
    known = len({r[0] for r in await db.fetch("SELECT code FROM currencies")} & set(rates))
    assert body == {"status": "success", "message": f"{known * (known - 1)} exchange rates updated"}, body
    assert provider["calls"] == ["/latest"]
    codes = {1: "USD", 2: "EUR", 3: "RUB"}
    for a, code_a in codes.items():
        for b, code_b in codes.items():
            if a != b:
                assert await stored(db, a, b) == cross_rate(rates[code_a], rates[code_b]), (code_a, code_b)
    assert await stored(db, 1, 3) == Decimal("91.0280480184")  # 98.7654321 / 1.085 = 91.02804801843…, cut
    assert await stored(db, 2, 1) == Decimal("1.0850000000")
    assert await stored(db, 1, 2) == Decimal("0.9216589861")  # 1 / 1.085 = 0.92165898617…: half-even gave …862
    last = await (await client.get("/service/exchange-rates/last-update", headers=service["headers"])).json()
    assert datetime.fromisoformat(last["iso"]) == datetime.fromtimestamp(stamp, timezone.utc)

    conversion = await client.post("/service/exchange-rates/get-conversion", headers=service["headers"],
                                   params={"from_currency": "usd", "to_currency": "RUB", "amount": "3.3"})
    assert conversion.status == 200, await conversion.text()
    assert await conversion.json() == {
        "from_currency": "USD", "to_currency": "RUB", "original_amount": "3.3000000000",
        "converted_amount": f"{converted('3.3', '91.0280480184'):f}"}
    resp = await client.post("/service/exchange-rates/get-conversion", headers=service["headers"],
                             params={"from_currency": "EUR", "to_currency": "EUR", "amount": "2"})
    assert (await resp.json())["converted_amount"] == "2.0000000000"


async def test_quote_uses_exactly_the_transfer_arithmetic(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    assert (await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)).status == 200
    await fund(client, alice, service, 1, "1000")
    await fund(client, alice, service, 3, "1000")
    for src, dst, amount in [(1, 2, "7.7777777777"), (1, 3, "0.0000000003"), (3, 1, "123.4567890123"),
                             (3, 2, "0.0000000101"), (2, 2, "1")]:
        if dst == 2 and src == 2:
            await fund(client, alice, service, 2, "10")
        quote = await client.post("/wallet/exchange", headers=alice["headers"],
                                  params={"from_currency": src, "to_currency": dst, "amount": amount})
        assert quote.status == 200, await quote.text()
        quote = await quote.json()
        before = (await balance(client, bob, dst))[0]
        tx = await api_transfer(client, alice, src, bob["wallets"][dst]["id"], amount)
        assert tx.status == 200, await tx.text()
        tx = await tx.json()
        assert tx["rate"] == quote["rate"] and tx["converted_amount"] == quote["amount_ext"]
        assert quote["amount_int"] == tx["amount"]
        assert (await balance(client, bob, dst))[0] - before == Decimal(quote["amount_ext"])
        if src != dst:
            assert Decimal(quote["amount_ext"]) == converted(amount, await stored(db, src, dst))
    # An amount that converts to zero is refused by both.
    quote = await client.post("/wallet/exchange", headers=alice["headers"],
                              params={"from_currency": 3, "to_currency": 1, "amount": "0.0000000001"})
    assert quote.status == 400
    before = await wallets_snapshot(db)
    resp = await api_transfer(client, alice, 3, bob["wallets"][1]["id"], "0.0000000001")
    assert resp.status == 400
    assert await wallets_snapshot(db) == before
    await assert_ledger_consistent(db)


async def test_set_rate_changes_one_pair_only(make_client, db):
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    reverse = await stored(db, 3, 1)
    # Lower than any rate this module stores for USD→RUB (92.5 seeded, 91.03 pulled): a lower rate
    # never lets a round trip gain, and it is within WALLETD_RATE_MAX_CHANGE of either.
    resp = await client.post("/service/exchange-rates/set", headers=OPERATOR,
                             params={"from_currency": 1, "to_currency": 3, "rate": "85.123456789012"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["rate"] == "85.1234567890" and body["from_currency"] == 1 and body["to_currency"] == 3
    assert await stored(db, 1, 3) == Decimal("85.1234567890") and await stored(db, 3, 1) == reverse
    await fund(client, alice, service, 1, "10")
    tx = await (await api_transfer(client, alice, 1, bob["wallets"][3]["id"], "2")).json()
    assert tx["rate"] == "85.1234567890" and tx["converted_amount"] == "170.2469135780"
    # Neither a user token nor a service token sets rates: that is the operator's.
    for headers in (alice["headers"], service["headers"]):
        resp = await client.post("/service/exchange-rates/set", headers=headers,
                                 params={"from_currency": 1, "to_currency": 3, "rate": "84"})
        assert resp.status == 403 and (await resp.json())["code"] == "operator_key_required"
    assert await stored(db, 1, 3) == Decimal("85.1234567890")


async def test_stale_rates_are_refused(make_client, provider, db):
    client = await make_client(rates_url=provider["url"], rates_max_age_seconds=60)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    provider["latest"]["timestamp"] = int(time.time()) - 3600
    assert (await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)).status == 200
    before = await wallets_snapshot(db)
    resp = await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "1")
    assert resp.status == 409 and (await resp.json())["message"] == "exchange_rate_stale"
    resp = await client.post("/wallet/exchange", headers=alice["headers"],
                             params={"from_currency": 1, "to_currency": 2, "amount": "1"})
    assert resp.status == 409
    resp = await client.post("/service/exchange-rates/get-conversion", headers=service["headers"],
                             params={"from_currency": "USD", "to_currency": "EUR", "amount": "1"})
    assert resp.status == 409
    assert await wallets_snapshot(db) == before
    # Same-currency transfers need no rate; a fresh rate for one pair makes that pair usable again.
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    assert (await client.post("/service/exchange-rates/set", headers=OPERATOR,
                              params={"from_currency": 1, "to_currency": 2, "rate": "0.5", **FORCE})).status == 200
    resp = await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "1")
    assert resp.status == 200 and (await resp.json())["converted_amount"] == "0.5000000000"
    assert (await api_transfer(client, alice, 1, bob["wallets"][3]["id"], "1")).status == 409
    # A fresh pull makes every pair usable again.
    provider["latest"]["timestamp"] = int(time.time())
    assert (await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)).status == 200
    assert (await api_transfer(client, alice, 1, bob["wallets"][3]["id"], "1")).status == 200


async def test_currencies_update_adds_wallets_and_rates_follow(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    resp = await client.post("/service/currencies/update", headers=service["headers"])
    assert resp.status == 403 and provider["calls"] == [], "adding currencies is the operator's"
    resp = await client.post("/service/currencies/update", headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    assert provider["calls"] == ["/symbols"]
    gbp = await db.fetchval("SELECT id FROM currencies WHERE code = 'GBP'")
    assert gbp is not None
    wallets = (await (await client.get("/user/wallets", headers=alice["headers"])).json())["wallets"]
    assert [w["currency_id"] for w in wallets] == sorted(w["currency_id"] for w in wallets)
    gbp_wallet = next(w for w in wallets if w["currency_id"] == gbp)
    assert gbp_wallet["balance"] == "0.0000000000" and gbp_wallet["currency"] == "GBP"
    assert await db.fetchval("SELECT count(*) FROM wallets WHERE currency_id = $1 AND user_id = $2",
                             gbp, service["id"]) == 2  # service and gateway
    assert await db.fetchval("SELECT count(*) FROM wallets WHERE currency_id = $1 AND kind = 'operator'", gbp) == 1
    # A second pull adds nothing.
    again = await (await client.post("/service/currencies/update", headers=OPERATOR)).json()
    assert again["status"] == "success" and again["message"].startswith("0 ")
    # Without a rate the new currency cannot be reached; after the rates pull it can.
    await fund(client, alice, service, 2, "100")
    resp = await api_transfer(client, alice, 2, gbp_wallet["id"], "10")
    assert resp.status == 400 and (await resp.json())["message"] == "exchange_rate_not_found"
    assert (await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)).status == 200
    resp = await api_transfer(client, alice, 2, gbp_wallet["id"], "10")
    assert resp.status == 200, await resp.text()
    latest = provider["latest"]["rates"]
    expected = converted(10, cross_rate(latest["EUR"], latest["GBP"]))
    assert (await resp.json())["converted_amount"] == f"{expected:f}"
    # A deposit in the new currency works through the service's new wallets.
    bob_wallets = (await (await client.get("/user/wallets", headers=bob["headers"])).json())["wallets"]
    bob["wallets"] = {w["currency_id"]: w for w in bob_wallets}
    await fund(client, bob, service, gbp, "5")
    assert await balance(client, bob, gbp) == (Decimal("4.95"), 0)
    await assert_ledger_consistent(db)


async def test_provider_failures_are_502_and_change_nothing(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    rates = await db.fetch("SELECT * FROM exchange_rates ORDER BY 1, 2")
    provider["status"] = 500
    resp = await client.post("/service/exchange-rates/update", headers=OPERATOR)
    assert resp.status == 502
    provider["status"] = 200
    provider["latest"] = {"unexpected": True}
    resp = await client.post("/service/exchange-rates/update", headers=OPERATOR)
    assert resp.status == 502
    nowhere = await make_client(rates_url="http://127.0.0.1:9")
    resp = await nowhere.post("/service/exchange-rates/update", headers=OPERATOR)
    assert resp.status == 502
    unconfigured = await make_client()
    resp = await unconfigured.post("/service/exchange-rates/update", headers=OPERATOR)
    assert resp.status == 502
    assert await db.fetch("SELECT * FROM exchange_rates ORDER BY 1, 2") == rates


async def test_unrepresentable_provider_data_is_skipped_not_a_500(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    quoted = dict(provider["latest"]["rates"])
    assert (await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)).status == 200
    before = {(r[0], r[1]): r[2] for r in await db.fetch("SELECT from_currency_id, to_currency_id, rate "
                                                           "FROM exchange_rates")}
    # RUB is not a number and GBP is zero: their pairs keep their previous rates, the rest is stored.
    provider["latest"] = {"base": "EUR", "timestamp": int(time.time()),
                          "rates": {"EUR": 1, "USD": quoted["USD"], "RUB": "NaN", "GBP": "0"}}
    resp = await client.post("/service/exchange-rates/update", headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["message"] == "2 exchange rates updated"
    after = {(r[0], r[1]): r[2] for r in await db.fetch("SELECT from_currency_id, to_currency_id, rate "
                                                          "FROM exchange_rates")}
    assert after == before
    # USD→EUR would be 10^12 (storable), EUR→USD is zero at 10 places (skipped, so the old one
    # stays): together a round trip would return 10^12 times what it started with. Refused, force
    # or not, and nothing changes.
    provider["latest"]["rates"] = {"EUR": 1, "USD": "0.000000000001", "RUB": "NaN"}
    for params in ({}, FORCE):
        resp = await client.post("/service/exchange-rates/update", headers=OPERATOR, params=params)
        assert resp.status == 409, await resp.text()
        assert (await resp.json())["code"] == "rate_arbitrage"
    assert {(r[0], r[1]): r[2] for r in await db.fetch("SELECT from_currency_id, to_currency_id, rate "
                                                         "FROM exchange_rates")} == before
    # Currency codes the schema cannot hold are skipped; the others are added.
    provider["symbols"] = {"symbols": {"ÉUR": "accented", "Z1": "Zed\u0000 coin", "x": "too short"}}
    resp = await client.post("/service/currencies/update", headers=OPERATOR)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["message"].startswith("1 ")
    assert await db.fetchval("SELECT name FROM currencies WHERE code = 'Z1'") == "Zed coin"
    assert await db.fetchval("SELECT count(*) FROM currencies WHERE code NOT SIMILAR TO '[A-Z0-9]+'") == 0


async def test_signup_bonus_is_booked_from_the_operator_through_the_journal(make_client, db, database_url):
    bonus = Decimal("1.000001")
    client = await make_client(signup_bonus=bonus)
    operator_before = dict(await db.fetch("SELECT currency_id, balance FROM wallets WHERE kind = 'operator'"))
    currencies = [r[0] for r in await db.fetch("SELECT id FROM currencies ORDER BY id")]
    users = [await register(client, "lucky") for _ in range(3)]
    for user in users:
        assert sorted(user["wallets"]) == currencies
        for currency in currencies:
            assert await balance(client, user, currency) == (bonus, 0)
        history = await (await client.get("/user/transactions", headers=user["headers"])).json()
        bonuses = [tx for tx in history["transactions"] if tx["type"] == "bonus"]
        assert len(bonuses) == len(currencies) and all(tx["amount"] == "1.0000010000" for tx in bonuses)
    operator_after = dict(await db.fetch("SELECT currency_id, balance FROM wallets WHERE kind = 'operator'"))
    for currency in currencies:
        assert operator_before[currency] - operator_after[currency] == 3 * bonus
    # The bonus is spendable like any money, and the ledger stays balanced.
    assert (await api_transfer(client, users[0], 1, users[1]["wallets"][1]["id"], bonus)).status == 200
    assert await balance(client, users[1], 1) == (2 * bonus, 0)
    await assert_ledger_consistent(db)
    code, out = await run_cli(database_url, "audit")
    assert code == 0, out
    # Service users get no bonus.
    service = await register_service(client)
    assert await db.fetchval("SELECT count(*) FROM wallets WHERE user_id = $1 AND balance <> 0", service["id"]) == 0
