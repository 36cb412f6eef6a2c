"""Moving to Citus and growing it: a single-node walletd database distributed in place by
`walletd migrate` once the citus extension is there, and a worker added under load, its share of
the shards moved to it (logical replication, writes go on). Both times `walletd audit` is clean
before and after, and every balance, history page and stored response is what it was."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from decimal import Decimal

import asyncpg

from tests.citus.conftest import recover_two_phase, users_on, worker_of
from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.e2e.test_reversal import reverse
from tests.polling import until


async def snapshot(client, users: list[dict]) -> dict:
    """What each user sees: wallets, whole history, each wallet's history, pending lists."""
    seen = {}
    for user in users:
        wallets = await (await client.get("/user/wallets", headers=user["headers"])).json()
        history = await (await client.get("/user/transactions", headers=user["headers"],
                                          params={"limit": 200})).json()
        pages = {}
        for wallet in user["wallets"].values():
            pages[wallet["id"]] = await (await client.get("/wallet/transactions", headers=user["headers"], params={
                "wallet_id": wallet["id"], "limit": 200})).json()
        seen[user["username"]] = (wallets, history, pages)
    return seen


async def audit_is_clean(url: str) -> str:
    """`walletd audit` (books and chain) is clean; returns its line about the chain."""
    code, out = await run_cli(url, "audit")
    assert code == 0 and "audit: clean" in out, out
    return next(line for line in out.splitlines() if line.startswith("journal chain:"))


async def sealed_everything(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) > 0 AND bool_and(EXISTS (SELECT 1 FROM journal_seals s "
                                   "WHERE s.entry_id = e.id)) FROM journal_entries e")
    finally:
        await conn.close()


async def test_a_single_node_database_is_distributed_in_place(citus_cluster, make_client):
    name = f"walletd_in_place_{os.getpid()}"
    url = await citus_cluster.create_database(name, citus=False)
    code, out = await run_cli(url, "migrate")
    assert code == 0, out
    conn = await asyncpg.connect(url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'citus'")
    finally:
        await conn.close()

    client = await make_client(database_url=url)
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    await fund(client, bob, service, 2, "50")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", key)).json()
    moves = []
    for source, currency, target, amount in ((alice, 1, bob["wallets"][2]["id"], "3"),
                                             (bob, 2, carol["wallets"][3]["id"], "4.5"),
                                             (alice, 1, alice["wallets"][3]["id"], "1")):
        resp = await api_transfer(client, source, currency, target, amount)
        assert resp.status == 200, await resp.text()
        moves.append(await resp.json())
    # The operator reverses bob's transfer to carol: a reversal both of them see.
    assert (await reverse(client, moves[1]["id"])).status == 200
    await api_external_wallet(client, alice, 1)
    resp = await api_withdraw(client, alice, service, 1, "5")
    assert resp.status == 200, await resp.text()
    held = await resp.json()
    resp = await api_deposit(client, carol, service, 1, "8")
    assert resp.status == 200, await resp.text()
    waiting = await resp.json()
    before = await snapshot(client, [alice, bob, carol])
    await until(lambda: sealed_everything(url), what="the single node's sealer caught up")
    await client.close()  # walletd stops while the tables move
    chain = await audit_is_clean(url)
    assert "0 newer entries not sealed yet" in chain, chain

    await citus_cluster.enable_citus(name)
    code, out = await run_cli(url, "migrate")
    assert code == 0 and "citus.distributed" in out, out
    # The chain sealed on the single node reads the same on the cluster (the copies added are the
    # records it covers already).
    assert await audit_is_clean(url) == chain

    client = await make_client(database_url=url)
    assert await snapshot(client, [alice, bob, carol]) == before
    replay = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", key)
    assert replay.status == 200 and await replay.json() == first
    assert (await api_settle(client, service, "withdraw", held["id"], "rejected")).status == 200
    assert (await api_settle(client, service, "deposit", waiting["id"], "paid")).status == 200
    assert (await api_transfer(client, carol, 1, alice["wallets"][1]["id"], "2")).status == 200
    bob_page = await (await client.get("/user/transactions", headers=bob["headers"])).json()
    assert first["id"] in [t["id"] for t in bob_page["transactions"]], "the receiver's copy was written"
    again = await reverse(client, moves[1]["id"])
    assert again.status == 409 and (await again.json())["code"] == "already_reversed"
    assert (await reverse(client, moves[0]["id"])).status == 200
    await until(lambda: sealed_everything(url), what="the cluster's sealer caught up")
    await client.close()
    chain = await audit_is_clean(url)
    assert "0 newer entries not sealed yet" in chain, chain


async def test_a_new_worker_takes_shards_while_transfers_go_on(citus_cluster, make_client):
    name = f"walletd_grow_{os.getpid()}"
    url = await citus_cluster.create_database(name)
    conn = await asyncpg.connect(url)
    try:
        # Fewer shards than the default 32: this test moves some of them and should not take long.
        await conn.execute(f'ALTER DATABASE "{name}" SET citus.shard_count = 8')
    finally:
        await conn.close()
    code, out = await run_cli(url, "migrate")
    assert code == 0, out
    client = await make_client(database_url=url)
    service = await register_service(client)
    users = [await register(client, "grow") for _ in range(8)]
    for user in users:
        await fund(client, user, service, 1, "20")
    before = await snapshot(client, users)
    await audit_is_clean(url)

    node = await asyncio.to_thread(citus_cluster.add_worker)
    await citus_cluster.add_to_database(node, name)
    rng = random.Random(3)
    moved: list[tuple[dict, dict, Decimal, dict]] = []
    rebalanced = asyncio.Event()

    async def transfers() -> None:
        while not rebalanced.is_set() or len(moved) < 5:
            source, target = rng.sample(users, 2)
            amount = Decimal(rng.randint(1, 50)) / 100
            key = {"Idempotency-Key": uuid.uuid4().hex}
            for _ in range(100):
                resp = await api_transfer(client, source, 1, target["wallets"][1]["id"], amount, key)
                if resp.status == 200:
                    moved.append((source, target, amount, await resp.json()))
                    break
                assert resp.status == 503 and resp.headers.get("Retry-After"), await resp.text()
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.05)

    async def rebalance() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT rebalance_table_shards()")
        finally:
            await conn.close()
            rebalanced.set()

    await asyncio.gather(transfers(), rebalance())
    conn = await asyncpg.connect(url)
    try:
        shards = await conn.fetchval("SELECT count(*) FROM pg_dist_shard_placement WHERE nodeport = $1", node.port)
        assert shards > 0, "the new worker holds shards"
        newcomer = (await users_on(conn, [node.port], 1, register, client))[node.port][0]
    finally:
        await conn.close()
    await recover_two_phase(url)
    await audit_is_clean(url)

    # Every balance is the old one plus what the acknowledged transfers moved; history grew by them.
    expected = {u["id"]: Decimal(w["balance"]) for u in users
                for w in before[u["username"]][0]["wallets"] if w["currency_id"] == 1}
    for source, target, amount, _ in moved:
        expected[source["id"]] -= amount
        expected[target["id"]] += amount
    for user in users:
        wallets = await (await client.get("/user/wallets", headers=user["headers"])).json()
        assert Decimal(wallets["wallets"][0]["balance"]) == expected[user["id"]], user["username"]
    # A user whose shard is on the new worker pays one whose shard is not.
    await fund(client, newcomer, service, 1, "10")
    elsewhere = [u for u in users if u["id"] not in {newcomer["id"]}]
    conn = await asyncpg.connect(url)
    try:
        other = [u for u in elsewhere if await worker_of(conn, u["id"]) != node.port][0]
    finally:
        await conn.close()
    assert (await api_transfer(client, newcomer, 1, other["wallets"][1]["id"], "0.01")).status == 200
    wallets = await (await client.get("/user/wallets", headers=other["headers"])).json()
    assert Decimal(wallets["wallets"][0]["balance"]) == expected[other["id"]] + Decimal("0.01")
    await client.close()
    await audit_is_clean(url)
