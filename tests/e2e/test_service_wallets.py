"""GET /service/wallets: a payment service sees its own books, its service wallet (commissions)
and gateway wallet (money in and out through it) in every currency, with their balances; a user
token is refused, and no service sees another's wallets."""

from __future__ import annotations

import uuid

from tests.conftest import fund, register, register_service


async def test_a_service_lists_its_service_and_gateway_wallets_with_balances(client, db):
    service, other = await register_service(client), await register_service(client)
    alice = await register(client, "alice")
    await fund(client, alice, service, 2, "200")  # gateway −200, service +2 (1%)
    resp = await client.get("/service/wallets", headers=service["headers"])
    body = await resp.json()
    assert resp.status == 200, body
    wallets = body["wallets"]
    currencies = [r["id"] for r in await db.fetch("SELECT id FROM currencies ORDER BY id")]
    assert [(w["currency_id"], w["kind"]) for w in wallets] == [(c, k) for c in currencies for k in ("service", "gateway")]
    assert {w["user_id"] for w in wallets} == {service["id"]}
    stored = {str(r["id"]): r for r in await db.fetch("SELECT id, balance::text, reserved_balance::text FROM wallets "
                                                      "WHERE user_id = $1", uuid.UUID(service["id"]))}
    assert {w["id"] for w in wallets} == set(stored)
    for w in wallets:
        assert (w["balance"], w["reserved_balance"]) == (stored[w["id"]]["balance"], stored[w["id"]]["reserved_balance"])
        assert w["available"] == w["balance"] and w["currency"]
    eur = {w["kind"]: w for w in wallets if w["currency_id"] == 2}
    assert eur["service"]["balance"] == "2.0000000000" and eur["gateway"]["balance"] == "-200.0000000000"
    theirs = (await (await client.get("/service/wallets", headers=other["headers"])).json())["wallets"]
    assert not {w["id"] for w in theirs} & {w["id"] for w in wallets}
    resp = await client.get("/service/wallets", headers=alice["headers"])
    assert resp.status == 401 and (await resp.json())["code"] == "wrong_role"
