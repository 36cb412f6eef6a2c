"""WALLETD_READ_DATABASE_URL: history pages come from the read database (a standby in
production), everything that decides stays on the primary."""

from __future__ import annotations

from decimal import Decimal

from tests.conftest import balance, create_database, fund, register, register_service
from walletd.appkeys import history_pool_key, pool_key


async def _transfer(client, alice, bob, amount: str) -> dict:
    resp = await client.post("/wallet/transfer", headers=alice["headers"],
                             json={"source_wallet_id": alice["wallets"][1]["id"],
                                   "target_wallet_id": bob["wallets"][1]["id"], "amount": amount})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_history_is_read_from_the_read_database_and_money_from_the_primary(make_client, admin_url):
    # A database with the schema and none of the data: a standby that has replayed nothing yet.
    lagging = await create_database(admin_url)
    client = await make_client(read_database_url=lagging)
    alice, bob, service = await register(client), await register(client), await register_service(client)
    credited = await fund(client, alice, service, 1, "100")
    await _transfer(client, alice, bob, "10")

    assert await balance(client, alice, 1) == (credited - Decimal(10), Decimal(0))
    user_page = await (await client.get("/user/transactions", headers=bob["headers"])).json()
    assert user_page["transactions"] == [] and user_page["pending_transactions"] == []
    # Ownership is the primary's answer, so bob's own wallet is found; its page is the lagging one.
    resp = await client.get("/wallet/transactions", headers=bob["headers"],
                            params={"wallet_id": bob["wallets"][1]["id"]})
    assert resp.status == 200 and (await resp.json())["transactions"] == []
    resp = await client.get("/wallet/transactions", headers=bob["headers"],
                            params={"wallet_id": alice["wallets"][1]["id"]})
    assert resp.status == 404


async def test_a_read_only_session_serves_history_and_never_takes_a_write(make_client, database_url):
    # The same database through sessions that refuse writes, as a hot standby's do.
    read_only = database_url + ("&" if "?" in database_url else "?") + "default_transaction_read_only=on"
    client = await make_client(read_database_url=read_only)
    assert await client.app[history_pool_key].fetchval("SHOW default_transaction_read_only") == "on"
    assert await client.app[pool_key].fetchval("SHOW default_transaction_read_only") == "off"
    alice, bob, service = await register(client), await register(client), await register_service(client)
    await fund(client, alice, service, 1, "100")
    sent = await _transfer(client, alice, bob, "7")

    page = await (await client.get("/user/transactions", headers=bob["headers"])).json()
    assert [tx["id"] for tx in page["transactions"]] == [sent["id"]]
    resp = await client.get("/wallet/transactions", headers=alice["headers"],
                            params={"wallet_id": alice["wallets"][1]["id"]})
    assert sent["id"] in [tx["id"] for tx in (await resp.json())["transactions"]]
