from decimal import Decimal

from tests.conftest import balance, fund, register, register_service


async def test_register_deposit_settle_transfer(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "100")
    assert await balance(client, alice, 1) == (credited, Decimal(0))
    resp = await client.post("/wallet/transfer", headers=alice["headers"], params={
        "source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": bob["wallets"][2]["id"], "amount": "10"})
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    assert tx["type"] == "transfer" and tx["status"] == "close" and tx["rate"] == "0.9200000000"
    assert tx["converted_amount"] == "9.2000000000"
    assert await balance(client, bob, 2) == (Decimal("9.2"), Decimal(0))
    totals = await db.fetch("SELECT currency_id, sum(balance + reserved_balance) FROM wallets GROUP BY 1")
    assert all(t[1] == 0 for t in totals)
