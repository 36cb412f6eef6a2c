"""Rates belong to the operator, and the exchange desk never loses on a round trip, through real
HTTP on PostgreSQL: who may write rates, the round-trip rule on sets and pulls (force never lifts
it), the change rule (force lifts it), the 24-hour default age, and conversions too large for an
amount. Every test starts from a full pull (force), so the module's tests run in any order."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from fractions import Fraction

from tests.conftest import (
    OPERATOR,
    api_transfer,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    wallets_snapshot,
)
from walletd.config import Settings

FORCE = {"force": "true"}
QUOTES = {"EUR": 1, "USD": "1.1", "RUB": "100", "GBP": "0.8"}  # 1.1: half to even, 1/1.1 rounded up


async def pull(client, provider, quotes=QUOTES, **params):
    provider["latest"] = {"base": "EUR", "timestamp": int(time.time()), "rates": dict(quotes)}
    return await client.post("/service/exchange-rates/update", headers=OPERATOR, params=params)


async def table(db) -> dict[tuple[int, int], Decimal]:
    return {(r[0], r[1]): r[2] for r in await db.fetch("SELECT from_currency_id, to_currency_id, rate "
                                                       "FROM exchange_rates")}


async def set_rate(client, a: int, b: int, rate: str, headers=OPERATOR, **params):
    return await client.post("/service/exchange-rates/set", headers=headers,
                             params={"from_currency": a, "to_currency": b, "rate": rate, **params})


async def error(resp, status: int, code: str) -> dict:
    body = await resp.json()
    assert resp.status == status and body["code"] == code, body
    return body


async def test_rate_writes_belong_to_the_operator(make_client, provider, db, log_tap):
    client = await make_client(rates_url=provider["url"])
    assert (await pull(client, provider, **FORCE)).status == 200
    user, service = await register(client, "reader"), await register_service(client)
    before, calls = await table(db), len(provider["calls"])
    for headers in ({}, user["headers"], service["headers"], {"X-Operator-Key": "not-the-operator-key-at-all"},
                    {**service["headers"], "X-Operator-Key": ""}):
        await error(await set_rate(client, 1, 2, "0.9", headers=headers), 403, "operator_key_required")
        await error(await client.post("/service/exchange-rates/update", headers=headers), 403,
                    "operator_key_required")
        await error(await client.post("/service/currencies/update", headers=headers), 403, "operator_key_required")
    assert await table(db) == before and len(provider["calls"]) == calls, "nothing asked, nothing written"
    # Reading rates, quotes and conversions stays open to service users (and quotes to users).
    assert (await client.get("/service/exchange-rates/last-update", headers=service["headers"])).status == 200
    resp = await client.post("/service/exchange-rates/get-conversion", headers=service["headers"],
                             params={"from_currency": "USD", "to_currency": "EUR", "amount": "1"})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/wallet/exchange", headers=user["headers"],
                             params={"from_currency": 1, "to_currency": 2, "amount": "1"})
    assert resp.status == 200, await resp.text()

    # The operator's actions are audit lines with principal "operator", refusals included.
    log_tap.clear()
    assert (await set_rate(client, 1, 2, "0.9")).status == 200
    await error(await set_rate(client, 1, 2, "0.95"), 409, "rate_arbitrage")
    lines = [json.loads(line) for line in log_tap.lines]
    assert [(e["principal"], e["outcome"]) for e in lines if e["event"] == "operator.action"] == [
        ("operator", "ok"), ("operator", "rate_arbitrage")]
    assert [e["principal"] for e in lines if e["event"] == "rates.set"] == ["operator"]
    assert {e["principal"] for e in lines if e["event"] == "http.request"} == {"operator"}
    assert not any("test-operator-key" in line for line in log_tap.lines), "the key is never logged"


async def test_during_a_rotation_the_previous_operator_key_still_works(make_client, provider, db, log_tap):
    new_key, old_key = "the-new-operator-key-0123456789", "the-old-operator-key-0123456789"
    client = await make_client(operator_key=new_key, operator_key_previous=old_key, rates_url=provider["url"])
    for key in (new_key, old_key):
        resp = await client.post("/service/exchange-rates/update", headers={"X-Operator-Key": key}, params=FORCE)
        assert resp.status == 200, await resp.text()
    # Who still sends the key being retired shows in the audit lines (never the key itself).
    stragglers = [json.loads(line) for line in log_tap.lines if '"auth.operator_key_previous"' in line]
    assert [(e["path"], e["address"]) for e in stragglers] == [("/service/exchange-rates/update", "127.0.0.1")]
    assert not any(old_key in line or new_key in line for line in log_tap.lines)
    resp = await client.post("/service/exchange-rates/update", headers=OPERATOR, params=FORCE)
    await error(resp, 403, "operator_key_required")  # a key from neither side of the rotation
    after = await make_client(operator_key=new_key, rates_url=provider["url"])  # the rotation is over
    resp = await after.post("/service/exchange-rates/update", headers={"X-Operator-Key": old_key}, params=FORCE)
    await error(resp, 403, "operator_key_required")


async def test_derived_rates_are_cut_toward_the_desk_and_a_round_trip_loses(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    assert (await pull(client, provider, **FORCE)).status == 200
    rates = await table(db)
    assert rates[(2, 1)] == Decimal("1.1000000000") and rates[(1, 2)] == Decimal("0.9090909090")
    for (a, b), rate in rates.items():
        if (b, a) in rates:
            assert Fraction(rate) * Fraction(rates[(b, a)]) <= 1, (a, b)
    # A round trip of 10^10: half-even rates gained 0.1 at the desk's expense; now it loses.
    alice, service = await register(client, "tripper"), await register_service(client)
    assert await fund(client, alice, service, 1, "10101010101.0101010101") == Decimal(10) ** 10
    there = await api_transfer(client, alice, 1, alice["wallets"][2]["id"], "10000000000")
    assert there.status == 200 and (await there.json())["converted_amount"] == "9090909090.0000000000"
    back = await api_transfer(client, alice, 2, alice["wallets"][1]["id"], "9090909090")
    assert back.status == 200 and (await back.json())["converted_amount"] == "9999999999.0000000000"
    assert await balance(client, alice, 1) == (Decimal("9999999999"), 0)
    await assert_ledger_consistent(db)


async def test_a_set_that_would_let_a_round_trip_gain_is_refused_naming_the_reverse_rate(make_client, provider,
                                                                                        db):
    client = await make_client(rates_url=provider["url"])
    assert (await pull(client, provider, **FORCE)).status == 200
    before, wallets = await table(db), await wallets_snapshot(db)
    for params in ({}, FORCE):  # force lifts the change rule, never this one
        body = await error(await set_rate(client, 1, 2, "0.9090909091", **params), 409, "rate_arbitrage")
        assert body["detail"]["reverse_rate"] == "1.1000000000" and "1.1000000000" in body["message"]
        assert body["detail"]["max_rate"] == "0.9090909090"
    assert await table(db) == before and await wallets_snapshot(db) == wallets
    assert (await set_rate(client, 1, 2, "0.9090909090")).status == 200  # the highest allowed
    # Three currencies: lower USD→RUB, then try RUB→USD above what RUB→EUR→USD… allows.
    assert (await set_rate(client, 1, 3, "85")).status == 200
    rub_usd = (await table(db))[(3, 1)]
    pair_limit = Decimal(1) / Decimal(85)
    body = await error(await set_rate(client, 3, 1, "0.0115"), 409, "rate_arbitrage")
    assert Decimal("0.0115") < pair_limit, "the pair alone would allow it: the cycle through EUR does not"
    assert len(body["detail"]["cycle"]) == 4 and body["detail"]["cycle"][0] == 3
    assert (await table(db))[(3, 1)] == rub_usd


async def test_a_rate_far_from_the_stored_one_needs_force(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    assert (await pull(client, provider, **FORCE)).status == 200
    before = await table(db)
    body = await error(await set_rate(client, 1, 2, "0.7"), 409, "rate_change_too_large")  # 23 % lower
    assert body["detail"]["max_change"] == "0.2"
    assert body["detail"]["pairs"] == [{"from_currency": 1, "to_currency": 2, "stored": "0.9090909090",
                                        "rate": "0.7000000000"}]
    assert await table(db) == before
    assert (await set_rate(client, 1, 2, "0.75")).status == 200  # 17.5 % lower
    assert (await set_rate(client, 1, 2, "0.5", **FORCE)).status == 200  # 33 %, confirmed
    wider = await make_client(rates_url=provider["url"], rate_max_change=Decimal("0.5"))
    assert (await set_rate(wider, 1, 2, "0.3")).status == 200  # 40 % lower, within WALLETD_RATE_MAX_CHANGE=0.5
    # A pull moving USD by 36 % is refused as a whole; confirmed, it is stored.
    assert (await pull(client, provider, **FORCE)).status == 200
    before = await table(db)
    body = await error(await pull(client, provider, {**QUOTES, "USD": "1.5"}), 409, "rate_change_too_large")
    assert {(p["from_currency"], p["to_currency"]) for p in body["detail"]["pairs"]} >= {(1, 2), (2, 1)}
    assert await table(db) == before
    assert (await pull(client, provider, {**QUOTES, "USD": "1.5"}, **FORCE)).status == 200
    assert (await table(db))[(2, 1)] == Decimal("1.5")


async def test_rates_go_stale_after_24_hours_by_default(make_client, provider, db):
    assert Settings().rates_max_age_seconds == 86400 == Settings.from_env({}).rates_max_age_seconds
    client = await make_client(rates_url=provider["url"])  # the default age
    assert (await pull(client, provider, **FORCE)).status == 200
    alice, bob, service = await register(client, "aging"), await register(client, "aging"), await register_service(client)
    await fund(client, alice, service, 1, "10")
    # This test is about time: the stored rate's age moves, not the clock.
    await db.execute("UPDATE exchange_rates SET updated_at = now() - interval '23 hours 59 minutes' "
                     "WHERE from_currency_id = 1 AND to_currency_id = 2")
    assert (await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "1")).status == 200
    await db.execute("UPDATE exchange_rates SET updated_at = now() - interval '24 hours 1 minute' "
                     "WHERE from_currency_id = 1 AND to_currency_id = 2")
    before = await wallets_snapshot(db)
    body = await error(await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "1"), 409, "exchange_rate_stale")
    assert body["detail"]["updated_at"]
    assert await wallets_snapshot(db) == before
    assert (await pull(client, provider, **FORCE)).status == 200  # fresh again


async def test_a_conversion_too_large_for_an_amount_is_a_400_never_a_500(make_client, provider, db):
    client = await make_client(rates_url=provider["url"])
    provider["symbols"] = {"symbols": {"ZZZ": "A currency worth nothing"}}
    assert (await client.post("/service/currencies/update", headers=OPERATOR)).status == 200
    zzz = await db.fetchval("SELECT id FROM currencies WHERE code = 'ZZZ'")
    # 10^15 ZZZ for one USD: a pair with no reverse and in no cycle, so the desk cannot lose on it.
    assert (await set_rate(client, 1, zzz, "1000000000000000")).status == 200, "a new pair"
    alice, bob, service = await register(client, "huge"), await register(client, "huge"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    before = await wallets_snapshot(db)
    # 10^15 × 10^15 = 10^30 would not even fit NUMERIC(38,10); 2 × 10^15 is past the largest amount.
    for amount in ("1000000000000000", "2"):
        body = await error(await api_transfer(client, alice, 1, bob["wallets"][zzz]["id"], amount), 400,
                           "invalid_amount")
        assert "converts to more than" in body["message"]
        await error(await client.post("/wallet/exchange", headers=alice["headers"],
                                      params={"from_currency": 1, "to_currency": zzz, "amount": amount}),
                    400, "invalid_amount")
        await error(await client.post("/service/exchange-rates/get-conversion", headers=service["headers"],
                                      params={"from_currency": "USD", "to_currency": "ZZZ", "amount": amount}),
                    400, "invalid_amount")
    assert await wallets_snapshot(db) == before
    resp = await api_transfer(client, alice, 1, bob["wallets"][zzz]["id"], "1")  # exactly the largest amount
    assert resp.status == 200 and (await resp.json())["converted_amount"] == "1000000000000000.0000000000"
    await assert_ledger_consistent(db)
