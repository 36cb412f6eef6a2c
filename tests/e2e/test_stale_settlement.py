"""Who ends a pending deposit or withdrawal, through real HTTP on PostgreSQL: the payment service
whenever it answers; the operator (X-Operator-Key on the same settlement endpoints) only once the
record is stale; a payment-service settlement that contradicts the operator's is a 409 and a
conflict for a person (event to webhooks and feed, counter, warning line). The race between a late
`paid` and an operator's `rejected`: exactly one wins, the books balance. Also the stale list,
the stale gauge, and the fee fixed when the customer asked."""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    OPERATOR,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_withdraw,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    run_cli,
    wallets_snapshot,
)
from tests.oracles import commission_fee
from tests.polling import until
from tests.receiver import Receiver, of_type

AS_OPERATOR = {"headers": OPERATOR}  # in place of a service: api_settle sends these headers


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def stale(db, *ids: str) -> None:
    await until(lambda: db.fetchval("SELECT count(*) = $2 FROM transactions WHERE id = ANY($1::uuid[]) "
                                    "AND stale_at IS NOT NULL", list(ids), len(ids)), what=f"{ids} stale")


async def metric(client, name: str, **labels) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def setup(client, receiver=None):
    service, user = await register_service(client), await register(client, "payer")
    if receiver is not None:
        resp = await client.post("/service/webhooks", headers=service["headers"], json={"url": receiver.url})
        assert resp.status == 200, await resp.text()
    await api_external_wallet(client, user, 1)
    credited = await fund(client, user, service, 1, "100")
    return service, user, credited


async def test_the_operator_ends_a_pending_record_only_once_it_is_stale(make_client, db, log_tap):
    fresh = await make_client()  # the default TTL: nothing goes stale during this test
    service, user, credited = await setup(fresh)
    withdrawal = await (await api_withdraw(fresh, user, service, 1, "30")).json()
    before = await wallets_snapshot(db)
    for status in ("rejected", "paid"):
        resp = await api_settle(fresh, AS_OPERATOR, "withdraw", withdrawal["id"], status)
        assert resp.status == 409 and (await resp.json())["code"] == "transaction_not_stale", await resp.text()
    assert await wallets_snapshot(db) == before
    # A wrong key is no operator, and a user token is neither principal of the route.
    resp = await api_settle(fresh, {"headers": {"X-Operator-Key": "a-wrong-key-that-is-long-enough"}}, "withdraw",
                            withdrawal["id"], "rejected")
    assert resp.status == 403 and (await resp.json())["code"] == "operator_key_required"
    resp = await api_settle(fresh, user, "withdraw", withdrawal["id"], "rejected")
    assert resp.status == 401 and (await resp.json())["code"] == "wrong_role"

    client = await make_client(pending_ttl_seconds=1.0)
    deposit = await (await api_deposit(client, user, service, 1, "40")).json()
    await stale(db, withdrawal["id"], deposit["id"])
    log_tap.clear()
    resp = await api_settle(client, AS_OPERATOR, "withdraw", withdrawal["id"], "rejected")
    assert resp.status == 200 and (await resp.json())["status"] == "rejected", await resp.text()
    assert await balance(client, user, 1) == (credited, 0), "the hold is back"
    # The operator may also settle paid, after checking with the payment service: the fixed fee.
    resp = await api_settle(client, AS_OPERATOR, "deposit", deposit["id"], "paid")
    assert resp.status == 200 and (await resp.json())["status"] == "paid", await resp.text()
    assert await balance(client, user, 1) == (credited + 40 - commission_fee("40"), 0)
    lines = [json.loads(line) for line in log_tap.lines]
    settled = [e for e in lines if e["event"] in ("withdraw.settled", "deposit.settled")]
    assert [(e["principal"], e["settled_by"], e["status"]) for e in settled] == [
        ("operator", "operator", "rejected"), ("operator", "operator", "paid")]
    assert [e["outcome"] for e in lines if e["event"] == "operator.action"] == ["ok", "ok"]
    assert await db.fetchval("SELECT array_agg(settled_by ORDER BY settled_by) FROM transactions "
                             "WHERE id = ANY($1::uuid[])", [withdrawal["id"], deposit["id"]]) == ["operator"] * 2
    await assert_ledger_consistent(db)


async def test_a_payment_service_settlement_after_the_operators_is_a_conflict(make_client, receiver, db, log_tap):
    client = await make_client(pending_ttl_seconds=1.0, webhook_allow_hosts=("127.0.0.1",))  # the loopback receiver
    conflicts_before = await metric(client, "walletd_settlement_conflicts_total")
    service, user, credited = await setup(client, receiver)
    withdrawal = await (await api_withdraw(client, user, service, 1, "25")).json()
    await stale(db, withdrawal["id"])
    assert (await api_settle(client, AS_OPERATOR, "withdraw", withdrawal["id"], "rejected")).status == 200
    before = await wallets_snapshot(db)
    log_tap.clear()
    for _ in range(2):  # the payment service retries its late `paid`
        resp = await api_settle(client, service, "withdraw", withdrawal["id"], "paid")
        body = await resp.json()
        assert resp.status == 409 and body["code"] == "transaction_already_settled", body
        assert body["detail"]["settled_by"] == "operator" and body["detail"]["status"] == "rejected"
    assert await wallets_snapshot(db) == before, "nothing moved"
    # One event for the conflict however often it is retried, delivered and in the feed.
    delivered = await receiver.wait_for(of_type("settlement.conflict", withdrawal["id"]))
    event = delivered[0]["event"]
    assert event["conflict"] == {"refused_status": "paid", "status": "rejected", "settled_by": "operator"}
    assert event["data"]["status"] == "rejected" and event["data"]["id"] == withdrawal["id"]
    feed = await (await client.get("/service/events", headers=service["headers"])).json()
    assert [e["id"] for e in feed["events"] if e["type"] == "settlement.conflict"] == [event["id"]]
    assert await metric(client, "walletd_settlement_conflicts_total") - conflicts_before == 2
    warnings = [json.loads(line) for line in log_tap.lines if '"settlement.conflict"' in line]
    assert [(w["level"], w["transaction_id"], w["refused_status"]) for w in warnings] == [
        ("warning", withdrawal["id"], "paid")] * 2
    # Agreeing with the operator is no conflict: the same record, nothing counted.
    resp = await api_settle(client, service, "withdraw", withdrawal["id"], "rejected")
    assert resp.status == 200 and (await resp.json())["status"] == "rejected"
    assert await metric(client, "walletd_settlement_conflicts_total") - conflicts_before == 2
    # The payment service first, the operator after: the operator's 409 is no conflict to report.
    second = await (await api_withdraw(client, user, service, 1, "5")).json()
    await stale(db, second["id"])
    assert (await api_settle(client, service, "withdraw", second["id"], "paid")).status == 200
    resp = await api_settle(client, AS_OPERATOR, "withdraw", second["id"], "rejected")
    assert resp.status == 409 and (await resp.json())["detail"]["settled_by"] == "service"
    assert await metric(client, "walletd_settlement_conflicts_total") - conflicts_before == 2
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'settlement.conflict' "
                             "AND transaction_id = $1", second["id"]) == 0
    await assert_ledger_consistent(db)


async def test_a_late_paid_racing_an_operator_rejected_exactly_one_wins(make_client, db, database_url):
    client = await make_client(pending_ttl_seconds=1.0)
    service, user, credited = await setup(client)
    credited += await fund(client, user, service, 1, "1000")
    withdrawals = [await (await api_withdraw(client, user, service, 1, str(i + 1))).json() for i in range(8)]
    deposits = [await (await api_deposit(client, user, service, 1, str(10 + i))).json() for i in range(8)]
    records = [("withdraw", w) for w in withdrawals] + [("deposit", d) for d in deposits]
    await stale(db, *(r["id"] for _, r in records))
    # Each record: the payment service's late `paid` and the operator's `rejected` at once. The
    # operator's request does one more query first (its key's throttle), so it would always arrive
    # second; a random head start of up to 20 ms for one side or the other (this test is about
    # ordering) lets either arrive first.
    async def after(delay: float, call):
        await asyncio.sleep(delay)
        return await call

    answers = []
    for i, (kind, record) in enumerate(records):  # one record at a time: the pair races, not the crowd
        lead = random.uniform(0, 0.02)
        answers.append(await asyncio.gather(
            after(lead if i % 2 else 0, api_settle(client, service, kind, record["id"], "paid")),
            after(0 if i % 2 else lead, api_settle(client, AS_OPERATOR, kind, record["id"], "rejected"))))
    expected = credited  # the balance once every record is decided, from who won each
    winners = []
    for (kind, record), (service_answer, operator_answer) in zip(records, answers, strict=True):
        statuses = sorted([service_answer.status, operator_answer.status])
        assert statuses == [200, 409], (kind, record["id"], statuses)
        final = await db.fetchrow("SELECT status, settled_by FROM transactions WHERE id = $1", record["id"])
        winners.append(final["settled_by"])
        if service_answer.status == 200:
            assert tuple(final) == ("paid", "service")
            amount = Decimal(record["amount"])
            expected += -amount if kind == "withdraw" else amount - commission_fee(amount)
            assert (await operator_answer.json())["detail"]["settled_by"] == "service"
        else:
            assert tuple(final) == ("rejected", "operator")
            assert (await service_answer.json())["detail"]["settled_by"] == "operator"
            assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'settlement.conflict' "
                                     "AND transaction_id = $1", record["id"]) == 1
    # The books balance whoever won: every hold released or paid out, nothing twice.
    assert await balance(client, user, 1) == (expected, 0)
    print("race winners:", {who: winners.count(who) for who in set(winners)})
    await assert_ledger_consistent(db)
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out


async def test_the_stale_list_shows_a_service_its_own_and_the_operator_all(make_client, db):
    client = await make_client(pending_ttl_seconds=1.0)
    mine, theirs = await register_service(client), await register_service(client)
    user = await register(client, "lister")
    await api_external_wallet(client, user, 1)
    await fund(client, user, mine, 1, "50")
    ours = [await (await api_deposit(client, user, mine, 1, str(i + 1))).json() for i in range(3)]
    ours.append(await (await api_withdraw(client, user, mine, 1, "4")).json())
    other = await (await api_deposit(client, user, theirs, 1, "7")).json()
    await stale(db, *(r["id"] for r in ours), other["id"])
    stale_gauge = await metric(client, "walletd_pending_stale", type="deposit")
    assert stale_gauge >= 4 and await metric(client, "walletd_pending_stale", type="withdraw") >= 1

    listed = await (await client.get("/service/transactions/stale", headers=mine["headers"])).json()
    assert [t["id"] for t in listed["transactions"]] == sorted(r["id"] for r in ours)
    assert listed["next_cursor"] is None
    # Pages: limit and after.
    page = await (await client.get("/service/transactions/stale", headers=mine["headers"],
                                   params={"limit": 3})).json()
    rest = await (await client.get("/service/transactions/stale", headers=mine["headers"],
                                   params={"after": page["next_cursor"]})).json()
    assert [t["id"] for t in page["transactions"] + rest["transactions"]] == sorted(r["id"] for r in ours)
    theirs_listed = await (await client.get("/service/transactions/stale", headers=theirs["headers"])).json()
    assert [t["id"] for t in theirs_listed["transactions"]] == [other["id"]]
    everything = await (await client.get("/service/transactions/stale", headers=OPERATOR,
                                         params={"limit": 500})).json()
    assert {r["id"] for r in ours} | {other["id"]} <= {t["id"] for t in everything["transactions"]}
    resp = await client.get("/service/transactions/stale", headers=user["headers"])
    assert resp.status == 401
    # Settled records leave the list and the gauge.
    assert (await api_settle(client, mine, "deposit", ours[0]["id"], "rejected")).status == 200
    listed = await (await client.get("/service/transactions/stale", headers=mine["headers"])).json()
    assert ours[0]["id"] not in {t["id"] for t in listed["transactions"]}
    assert await metric(client, "walletd_pending_stale", type="deposit") == stale_gauge - 1


async def test_the_fee_is_fixed_when_the_customer_asks(make_client, db):
    client = await make_client(max_commission_rate=Decimal("0.05"))
    service, user, credited = await setup(client)
    service_wallet = await db.fetchval("SELECT id FROM wallets WHERE user_id = $1 AND currency_id = 1 "
                                       "AND kind = 'service'", service["id"])
    rates = {"currency_id": 1, "deposit_rate": "0.03", "withdraw_rate": "0.04"}
    assert (await client.post("/service/commission-rates", headers=service["headers"], params=rates)).status == 200
    deposit = await (await api_deposit(client, user, service, 1, "200")).json()
    withdrawal = await (await api_withdraw(client, user, service, 1, "50")).json()
    assert (deposit["commission_rate"], deposit["commission"]) == ("0.0300000000", "6.0000000000")
    assert (withdrawal["commission_rate"], withdrawal["commission"]) == ("0.0400000000", "2.0000000000")
    # The service raises its rates between the request and the settlement: within the ceiling...
    raised = {**rates, "deposit_rate": "0.05", "withdraw_rate": "0.05"}
    assert (await client.post("/service/commission-rates", headers=service["headers"], params=raised)).status == 200
    # ...and past it, which is refused and changes nothing.
    for name in ("deposit_rate", "withdraw_rate"):
        resp = await client.post("/service/commission-rates", headers=service["headers"],
                                 params={**raised, name: "0.9999999999"})
        assert resp.status == 400 and (await resp.json())["code"] == "commission_rate_too_high"
    listed = await (await client.get("/service/commission-rates", headers=service["headers"])).json()
    assert {(r["deposit_rate"], r["withdraw_rate"]) for r in listed["commission_rates"] if r["currency_id"] == 1} == {
        ("0.0500000000", "0.0500000000")}
    before = await db.fetchval("SELECT balance FROM wallets WHERE id = $1", service_wallet)
    settled = await (await api_settle(client, service, "deposit", deposit["id"], "paid")).json()
    assert (settled["commission_rate"], settled["commission"]) == ("0.0300000000", "6.0000000000")
    assert (await api_settle(client, service, "withdraw", withdrawal["id"], "paid")).status == 200
    assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", service_wallet) - before == 8
    assert await balance(client, user, 1) == (credited + 194 - 50, 0)
    # A rate stored above the ceiling (set before it existed) is charged at the ceiling.
    await db.execute("UPDATE commission_rates SET deposit_rate = 0.5 WHERE service_user_id = $1 AND currency_id = 1",
                     service["id"])
    capped = await (await api_deposit(client, user, service, 1, "10")).json()
    assert (capped["commission_rate"], capped["commission"]) == ("0.0500000000", "0.5000000000")
    history = await (await client.get("/user/transactions", headers=user["headers"])).json()
    shown = {t["id"]: (t["commission_rate"], t["commission"])
             for t in history["transactions"] + history["pending_transactions"]}
    assert shown[deposit["id"]] == ("0.0300000000", "6.0000000000") and shown[capped["id"]][0] == "0.0500000000"
    await assert_ledger_consistent(db)
