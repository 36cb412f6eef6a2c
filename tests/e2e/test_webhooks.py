"""Events through real HTTP: subscriptions, signed deliveries to a local receiver, retries, the
feed, pending transactions going stale, give-up, metrics. walletd runs in-process on a real
PostgreSQL; the receiver is an aiohttp app on 127.0.0.1."""

from __future__ import annotations

import json
from decimal import Decimal

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    balance,
    create_database,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.polling import until
from tests.receiver import Receiver, of_type
from tests.support.servers import LOOPBACK
from walletd.webhooks.signatures import verify


@pytest.fixture
def make_client(make_client):
    """walletd refuses loopback targets; the receiver listens on loopback, so this module allows
    it by name (WALLETD_WEBHOOK_ALLOW_HOSTS), as an operator would for a payment service on the host."""
    async def build(**overrides):
        return await make_client(**{"webhook_allow_hosts": (LOOPBACK,), **overrides})
    return build


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def subscribe(client, service: dict, url: str) -> dict:
    resp = await client.post("/service/webhooks", headers=service["headers"], json={"url": url})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_subscriptions_are_validated_listed_and_deleted(client, log_tap):
    service, other = await register_service(client), await register_service(client)
    for bad, why in [("ftp://example.com/x", "http or https"), ("http://user:pw@example.com/", "credentials"),
                     ("not-a-url", "http or https"), ("not a url", "whitespace"), ("http:///nohost", "host")]:
        resp = await client.post("/service/webhooks", headers=service["headers"], json={"url": bad})
        assert resp.status == 400, (bad, await resp.text())
        assert why in (await resp.json())["message"]
    user = await register(client)
    resp = await client.post("/service/webhooks", headers=user["headers"], json={"url": "http://127.0.0.1:9/x"})
    assert resp.status == 401  # user tokens are refused

    created = await subscribe(client, service, "https://93.184.215.14:8443/hooks?token=abc")  # a public address
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    listed = await (await client.get("/service/webhooks", headers=service["headers"])).json()
    assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
    assert "secret" not in listed["webhooks"][0]
    assert (await (await client.get("/service/webhooks", headers=other["headers"])).json())["webhooks"] == []

    # someone else's endpoint looks exactly like one that does not exist
    resp = await client.delete(f"/service/webhooks/{created['id']}", headers=other["headers"])
    assert resp.status == 404 and (await resp.json())["message"] == "webhook_not_found"
    assert (await client.delete("/service/webhooks/nope", headers=service["headers"])).status == 404
    resp = await client.delete(f"/service/webhooks/{created['id']}", headers=service["headers"])
    assert resp.status == 200
    assert (await (await client.get("/service/webhooks", headers=service["headers"])).json())["webhooks"] == []

    audit = [json.loads(line) for line in log_tap.lines]
    assert [e["webhook_id"] for e in audit if e["event"] == "webhook.created"] == [created["id"]]
    assert [e["webhook_id"] for e in audit if e["event"] == "webhook.deleted"] == [created["id"]]
    assert not any(created["secret"] in line or "token=abc" in line for line in log_tap.lines)


async def test_events_are_signed_delivered_and_listed_in_order(client, receiver, db):
    service = await register_service(client)
    hook = await subscribe(client, service, receiver.url)
    user = await register(client)
    await api_external_wallet(client, user, 1)

    deposit = await (await api_deposit(client, user, service, 1, "100")).json()
    settled = await (await api_settle(client, service, "deposit", deposit["id"], "paid")).json()
    withdrawal = await (await api_withdraw(client, user, service, 1, "5")).json()
    rejected = await (await api_settle(client, service, "withdraw", withdrawal["id"], "rejected")).json()
    second = await (await api_deposit(client, user, service, 1, "7")).json()
    await api_settle(client, service, "deposit", second["id"], "reject")
    events_before = await db.fetchval("SELECT count(*) FROM events")
    other = await register(client)
    assert (await api_transfer(client, user, 1, other["wallets"][1]["id"], "1")).status == 200
    assert await db.fetchval("SELECT count(*) FROM events") == events_before  # transfers write no events

    expected = [("deposit.requested", deposit), ("deposit.settled", settled), ("withdraw.requested", withdrawal),
                ("withdraw.rejected", rejected), ("deposit.requested", second)]
    await receiver.wait_for(lambda got: len([r for r in got if r["status"] < 300]) >= 6)
    got = receiver.delivered()
    for r in got:
        assert verify(hook["secret"], r["body"], r["signature"]), r["signature"]
        assert not verify(hook["secret"] + "x", r["body"], r["signature"])
        assert r["event_id"] == r["event"]["id"]
    by_type = {(r["event"]["type"], r["event"]["data"]["id"]): r["event"] for r in got}
    for kind, record in expected:
        assert by_type[(kind, record["id"])]["data"] == record  # the record exactly as the API returned it
    assert by_type[("deposit.rejected", second["id"])]["data"]["status"] == "rejected"

    # The feed: the same ids, oldest first, in pages.
    first = await (await client.get("/service/events", headers=service["headers"], params={"limit": 4})).json()
    rest = await (await client.get("/service/events", headers=service["headers"],
                                   params={"after": first["next_cursor"], "limit": 100})).json()
    listed = first["events"] + rest["events"]
    assert [e["type"] for e in listed] == ["deposit.requested", "deposit.settled", "withdraw.requested",
                                           "withdraw.rejected", "deposit.requested", "deposit.rejected"]
    assert sorted(e["id"] for e in listed) == sorted(r["event_id"] for r in got)
    assert {json.dumps(e, sort_keys=True) for e in listed} == {json.dumps(r["event"], sort_keys=True) for r in got}
    assert rest["next_cursor"] == listed[-1]["id"]
    again = await (await client.get("/service/events", headers=service["headers"],
                                    params={"after": rest["next_cursor"]})).json()
    assert again == {"events": [], "next_cursor": rest["next_cursor"]}
    other_service = await register_service(client)
    resp = await client.get("/service/events", headers=other_service["headers"], params={"after": listed[0]["id"]})
    assert resp.status == 400  # another service user's event is no cursor of theirs
    assert (await (await client.get("/service/events", headers=other_service["headers"])).json())["events"] == []


async def webhook_counts(client) -> dict[str, float]:
    """The webhook counters of /metrics (process-wide: compare before and after)."""
    text = await (await client.get("/metrics")).text()
    return {name: value for family in text_string_to_metric_families(text) for name, _, value, *_ in family.samples
            if name.startswith("walletd_webhook_")}


async def test_a_delivery_answered_500_is_retried_with_the_same_event_id(make_client, receiver, db):
    client = await make_client(webhook_backoff_seconds=0.2)
    before = await webhook_counts(client)
    service = await register_service(client)
    await subscribe(client, service, receiver.url)
    receiver.script = [500, 503]
    user = await register(client)
    deposit = await (await api_deposit(client, user, service, 1, "3")).json()
    delivered = await receiver.wait_for(of_type("deposit.requested", deposit["id"]))
    attempts = [r for r in receiver.received if r["event"]["data"]["id"] == deposit["id"]]
    assert [r["status"] for r in attempts] == [500, 503, 200]
    assert len({r["event_id"] for r in attempts}) == 1 and len({r["body"] for r in attempts}) == 1

    async def recorded():  # the receiver has answered; walletd records the outcome right after
        return await db.fetchrow("SELECT status, attempts FROM webhook_deliveries WHERE event_id = $1 "
                                 "AND status <> 'pending'", delivered[0]["event"]["id"])
    assert tuple(await until(recorded, what="the delivery recorded")) == ("delivered", 3)

    async def counted():  # counted right after the outcome is recorded, which the test may see first
        counts = await webhook_counts(client)
        done = counts["walletd_webhook_delivered_total"] - before["walletd_webhook_delivered_total"] >= 1
        return counts if done else None
    after = await until(counted, what="the delivery counted")
    assert after["walletd_webhook_retried_total"] - before["walletd_webhook_retried_total"] == 2
    assert after["walletd_webhook_delivered_total"] - before["walletd_webhook_delivered_total"] == 1


async def test_a_delivery_past_the_horizon_is_given_up(make_client, receiver, admin_url, log_tap):
    # A database of its own: a horizon this short would also give up what other tests of the module
    # left pending (their receivers stopped), and the counts below are of this delivery alone.
    url = await create_database(admin_url)
    db = await asyncpg.connect(url)
    try:
        await given_up_past_the_horizon(await make_client(database_url=url, webhook_backoff_seconds=0.2,
                                                          webhook_horizon_seconds=1.0), receiver, db, log_tap)
    finally:
        await db.close()


async def given_up_past_the_horizon(client, receiver, db, log_tap):
    before = await webhook_counts(client)
    service = await register_service(client)
    hook = await subscribe(client, service, receiver.url)
    receiver.script = [500] * 1000
    user = await register(client)
    deposit = await (await api_deposit(client, user, service, 1, "3")).json()
    event_id = await db.fetchval("SELECT id FROM events WHERE transaction_id = $1", deposit["id"])

    async def failed():
        return await db.fetchval("SELECT status = 'failed' FROM webhook_deliveries WHERE event_id = $1", event_id)
    await until(failed, what="the delivery given up")
    # The audit line is written once the dispatcher has recorded the outcome: after the commit
    # this test can already see, so wait for it too rather than race it.
    await until(lambda: any('"webhook.given_up"' in line for line in log_tap.lines), what="webhook.given_up logged")
    given_up = [json.loads(line) for line in log_tap.lines if '"webhook.given_up"' in line]
    # This dispatcher's horizon applies to every due delivery in the module's database: one that
    # another test left behind (its receiver gone, its transaction expired by a sweep) may be
    # given up here too, so only this endpoint's lines are this test's.
    assert [e["event_id"] for e in given_up if e["endpoint_id"] == hook["id"]] == [str(event_id)]
    after = await webhook_counts(client)
    assert after["walletd_webhook_failed_total"] - before["walletd_webhook_failed_total"] >= 1
    # still in the feed, for reconciliation
    feed = await (await client.get("/service/events", headers=service["headers"])).json()
    assert [e["id"] for e in feed["events"]] == [str(event_id)]


async def test_a_pending_past_the_ttl_goes_stale_keeps_its_hold_and_still_settles(
        make_client, receiver, db, database_url):
    client = await make_client(pending_ttl_seconds=2.0)
    service = await register_service(client)
    await subscribe(client, service, receiver.url)
    user = await register(client)
    await api_external_wallet(client, user, 1)
    credited = await fund(client, user, service, 1, "50")
    withdrawal = await (await api_withdraw(client, user, service, 1, "20")).json()
    deposit = await (await api_deposit(client, user, service, 1, "9")).json()
    assert await balance(client, user, 1) == (credited - 20, Decimal(20))
    entries_before = await db.fetchval("SELECT count(*) FROM journal_entries")

    went_stale = await receiver.wait_for(of_type("withdraw.stale", withdrawal["id"]))
    await receiver.wait_for(of_type("deposit.stale", deposit["id"]))
    assert went_stale[0]["event"]["data"] == withdrawal  # still pending, with its fixed fee
    # Time moved no money: the hold stays, no journal entry was written, the records are pending.
    assert await balance(client, user, 1) == (credited - 20, Decimal(20))
    assert await db.fetchval("SELECT count(*) FROM journal_entries") == entries_before
    history = await (await client.get("/user/transactions", headers=user["headers"])).json()
    assert {t["id"] for t in history["pending_transactions"]} >= {withdrawal["id"], deposit["id"]}
    feed = await (await client.get("/service/events", headers=service["headers"])).json()
    assert [e["type"] for e in feed["events"] if e["data"]["id"] in (withdrawal["id"], deposit["id"])] == [
        "withdraw.requested", "deposit.requested", "withdraw.stale", "deposit.stale"]

    # The payment service paid out during its holiday: its late answers settle normally.
    resp = await api_settle(client, service, "withdraw", withdrawal["id"], "paid")
    assert resp.status == 200 and (await resp.json())["status"] == "paid", await resp.text()
    resp = await api_settle(client, service, "deposit", deposit["id"], "paid")
    assert resp.status == 200 and (await resp.json())["status"] == "paid", await resp.text()
    assert await balance(client, user, 1) == (credited - 20 + Decimal(deposit["amount"]) -
                                              Decimal(deposit["commission"]), Decimal(0))
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out
