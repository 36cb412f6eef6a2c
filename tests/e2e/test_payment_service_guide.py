"""docs/payment-service.md, walked through as a payment service would, over real HTTP on a real
PostgreSQL: registration by the operator and a fresh login with the handed-over password, a
webhook that receives only the events written after it was registered, settlements, the feed
read in pages from a saved cursor, and the history records a settlement adds."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import (
    PASSWORD,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_withdraw,
    assert_ledger_consistent,
    register,
    register_service,
)
from tests.receiver import LOOPBACK, Receiver


@pytest.fixture
async def client(make_client):
    return await make_client(webhook_allow_hosts=(LOOPBACK,))  # the receiver listens on loopback


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def ok(resp) -> dict:
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def feed(client, service: dict, after: str | None, limit: int) -> dict:
    params = {"limit": limit} | ({"after": after} if after else {})
    return await ok(await client.get("/service/events", headers=service["headers"], params=params))


async def test_a_payment_service_follows_the_guide(client, receiver, db):
    registered = await register_service(client)  # the operator's POST /auth/register_service
    # The hand-off is the username and password; the service logs in for tokens itself.
    login = await ok(await client.get("/service/auth/login", params={"username": registered["username"],
                                                                     "password": PASSWORD}))
    assert login["user_id"] == registered["id"]
    service = {**registered, "headers": {"token": login["access_token"]}}
    user = await register(client)
    await api_external_wallet(client, user, 1)

    before_hook = await ok(await api_deposit(client, user, service, 1, "100"))
    hook = await ok(await client.post("/service/webhooks", headers=service["headers"], json={"url": receiver.url}))
    assert hook["secret"].startswith("whsec_")
    await ok(await api_settle(client, service, "deposit", before_hook["id"], "paid"))
    withdrawal = await ok(await api_withdraw(client, user, service, 1, "5"))
    await ok(await api_settle(client, service, "withdraw", withdrawal["id"], "paid"))

    # Webhooks: only the events written after the endpoint existed.
    await receiver.wait_for(lambda got: len([r for r in got if r["status"] < 300]) >= 3)
    delivered = sorted((r["event"]["type"], r["event"]["data"]["id"]) for r in receiver.delivered())
    assert delivered == [("deposit.settled", before_hook["id"]), ("withdraw.requested", withdrawal["id"]),
                         ("withdraw.settled", withdrawal["id"])]  # sorted: delivery order is not promised
    never_sent = await db.fetchval(
        """SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
            WHERE e.transaction_id = $1 AND e.type = 'deposit.requested'""", before_hook["id"])
    assert never_sent == 0

    # The feed: everything, oldest first, in pages; a saved cursor resumes exactly after it.
    first = await feed(client, service, None, 2)
    saved = first["next_cursor"]
    rest = await feed(client, service, saved, 100)
    assert [e["type"] for e in first["events"] + rest["events"]] == [
        "deposit.requested", "deposit.settled", "withdraw.requested", "withdraw.settled"]
    later = await ok(await api_deposit(client, user, service, 1, "7"))
    resumed = await feed(client, service, rest["next_cursor"], 100)
    assert [(e["type"], e["data"]["id"]) for e in resumed["events"]] == [("deposit.requested", later["id"])]
    again = await feed(client, service, saved, 100)  # a cursor saved before stays valid
    assert [e["id"] for e in again["events"]] == [e["id"] for e in rest["events"] + resumed["events"]]

    # What the settlements added to the user's history, and what they moved.
    mine = {w["kind"]: w for w in (await ok(await client.get("/service/wallets", headers=service["headers"])))[
        "wallets"] if w["currency_id"] == 1}
    user_wallet = user["wallets"][1]["id"]
    history = (await ok(await client.get("/user/transactions", headers=user["headers"],
                                         params={"limit": 50})))["transactions"]
    children = {(r["parent_id"], r["type"]): r for r in history if r["parent_id"]}
    credit = children[(before_hook["id"], "transfer")]
    fee_in = children[(before_hook["id"], "commission")]
    fee_out = children[(withdrawal["id"], "commission")]
    assert (credit["from_wallet_id"], credit["to_wallet_id"], credit["amount"]) == (
        mine["service"]["id"], user_wallet, "100.0000000000")
    assert (fee_in["from_wallet_id"], fee_in["to_wallet_id"], fee_in["amount"]) == (
        user_wallet, mine["service"]["id"], "1.0000000000")
    assert (fee_out["from_wallet_id"], fee_out["to_wallet_id"], fee_out["amount"]) == (
        user_wallet, mine["service"]["id"], "0.1000000000")
    assert (withdrawal["id"], "transfer") not in children  # a withdrawal writes no transfer record
    assert {r["id"]: r["status"] for r in history if r["id"] in (before_hook["id"], withdrawal["id"])} == {
        before_hook["id"]: "paid", withdrawal["id"]: "paid"}
    assert all(r["status"] == "close" for r in (credit, fee_in, fee_out))

    balance = Decimal((await ok(await client.get("/user/wallet", headers=user["headers"],
                                                 params={"wallet_id": user_wallet})))["balance"])
    assert balance == Decimal(credit["amount"]) - Decimal(fee_in["amount"]) - Decimal(withdrawal["amount"])  # 94
    assert Decimal(mine["service"]["balance"]) == Decimal("1.1")  # both commissions
    assert Decimal(mine["gateway"]["balance"]) == Decimal("-100") + Decimal("4.9")  # in 100, out 5 - 0.1
    await assert_ledger_consistent(db)
