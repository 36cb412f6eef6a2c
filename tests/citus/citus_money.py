"""walletd on Citus: the layout walletd migrate chose, the money paths end to end between users whose
wallets sit on different workers, and the distributed batch write refusing what the single-node
statement trigger refuses, atomically across workers."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.citus.conftest import users_on, worker_of
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
from tests.oracles import WITHDRAW_RATE, commission_fee, converted
from walletd.persistence.citus.layout import LAYOUT, ByUser, OnCoordinator, Reference
from walletd.persistence.history import _USER_HISTORY_OWNED, _WALLET_HISTORY_OWNED


@pytest.fixture(scope="module")
async def world(database_url, citus_cluster):
    """Two users on each worker and a payment service, on the module's distributed database."""
    from aiohttp.test_utils import TestClient, TestServer

    from tests.conftest import JWT_SECRET, OPERATOR_KEY, SECRETS_KEY
    from walletd.app import create_app
    from walletd.config import Settings

    settings = Settings(database_url=database_url, jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY,
                        secrets_key=SECRETS_KEY, pool_size=4)
    client = TestClient(TestServer(create_app(settings, database_url, JWT_SECRET)))
    await client.start_server()
    conn = await asyncpg.connect(database_url)
    ports = [w.port for w in citus_cluster.workers]
    placed = await users_on(conn, ports, 2, register, client)
    await conn.close()
    service = await register_service(client)
    yield {"client": client, "service": service, "ports": ports,
           "a": placed[ports[0]], "b": placed[ports[1]]}
    await client.close()


async def test_migrate_placed_every_table_as_the_layout_says(db, database_url):
    kinds = {r[0]: (r[1], r[2], r[3]) for r in await db.fetch(
        "SELECT logicalrelid::regclass::text, partmethod::text, repmodel::text, colocationid FROM pg_dist_partition")}
    groups = set()
    for placement in LAYOUT:
        if isinstance(placement, Reference):
            assert kinds[placement.table][:2] == ("n", "t"), placement
        elif isinstance(placement, ByUser):
            assert kinds[placement.table][0] == "h", placement
            column = await db.fetchval("SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition "
                                       "WHERE logicalrelid = $1::regclass", placement.table)
            assert column == placement.column
            groups.add(kinds[placement.table][2])
        else:  # plain PostgreSQL on the coordinator, unknown to Citus
            assert placement.table not in kinds, placement
            if isinstance(placement, OnCoordinator):
                assert not await db.fetchval(
                    "SELECT count(*) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f' "
                    "AND confrelid = ANY(ARRAY['users', 'currencies', 'exchange_rates']::regclass[])", placement.table)
    assert len(groups) == 1, "every table of a user's data in one co-location group"
    source = await db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'walletd_write_batch'")
    assert "walletd_two_phase" in source, "the distributed edition of the batch write is installed"
    code, out = await run_cli(database_url, "migrate")
    assert code == 0 and "nothing to apply" in out, out  # a second migrate places nothing again
    assert "citus.distributed" not in out and "citus.table_not_in_layout" not in out, out


async def test_one_users_rows_share_a_shard_and_a_history_page_reads_one(world, db):
    client, service = world["client"], world["service"]
    alice, bob = world["a"][0], world["b"][0]
    await fund(client, alice, service, 1, "50")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", key)).status == 200
    shards = set()
    for table in ("wallets", "postings", "journal_entries", "transactions", "idempotency_keys"):
        shards.add(await db.fetchval(
            "SELECT s.shardminvalue FROM pg_dist_shard s "
            "WHERE s.shardid = get_shard_id_for_distribution_column($1, $2::uuid)", table, alice["id"]))
    assert len(shards) == 1, shards  # the same hash range of one co-location group: one shard per table
    column = {p.table: p.column for p in LAYOUT if isinstance(p, ByUser)}
    for table in ("wallets", "postings", "journal_entries", "transactions", "idempotency_keys"):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column[table]} = $1", alice["id"]) > 0, table
    for query, args in ((_USER_HISTORY_OWNED, (alice["id"], 2**63 - 1, 51)),
                        (_WALLET_HISTORY_OWNED, (alice["wallets"][1]["id"], 2**63 - 1, 51, alice["id"]))):
        plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + query, *args))
        assert "Task Count: 1" in plan, plan  # a router query: the owner's shard only


async def test_money_paths_between_users_on_different_workers(world, db, database_url):
    client, service = world["client"], world["service"]
    alice, carol = world["a"][1], world["b"][1]
    assert await worker_of(db, alice["id"]) != await worker_of(db, carol["id"])
    credited = await fund(client, alice, service, 1, "100")  # deposit + settlement paid
    assert await balance(client, alice, 1) == (credited, 0)

    # Same currency, then across currencies (through the operator's exchange desks).
    key = {"Idempotency-Key": uuid.uuid4().hex}
    resp = await api_transfer(client, alice, 1, carol["wallets"][1]["id"], "12.5", key)
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    rate = Decimal((await (await client.post("/wallet/exchange", headers=alice["headers"], params={
        "from_currency": 1, "to_currency": 2, "amount": "1"})).json())["rate"])
    cross = await api_transfer(client, alice, 1, carol["wallets"][2]["id"], "10")
    assert cross.status == 200, await cross.text()
    assert (await cross.json())["converted_amount"] == str(converted("10", rate))
    assert await balance(client, carol, 1) == (Decimal("12.5"), 0)
    assert await balance(client, carol, 2) == (converted("10", rate), 0)
    assert await balance(client, alice, 1) == (credited - Decimal("22.5"), 0)

    # A retry with the same key answers the first response and moves nothing; other parameters: 422.
    replay = await api_transfer(client, alice, 1, carol["wallets"][1]["id"], "12.5", key)
    assert replay.status == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert await replay.json() == first
    other = await api_transfer(client, alice, 1, carol["wallets"][1]["id"], "13", key)
    assert other.status == 422 and (await other.json())["code"] == "idempotency_key_reused"
    assert await balance(client, carol, 1) == (Decimal("12.5"), 0)

    # History: each side reads the transfer from its own shard, once.
    for user, wallet in ((alice, alice["wallets"][1]["id"]), (carol, carol["wallets"][1]["id"])):
        page = await (await client.get("/user/transactions", headers=user["headers"])).json()
        assert [t["id"] for t in page["transactions"]].count(first["id"]) == 1, user["username"]
        wallet_page = await (await client.get("/wallet/transactions", headers=user["headers"],
                                              params={"wallet_id": wallet})).json()
        assert [t["id"] for t in wallet_page["transactions"]].count(first["id"]) == 1
        assert next(t for t in wallet_page["transactions"] if t["id"] == first["id"]) == first

    # A withdrawal held, one paid and one rejected; its pending record sits with its customer.
    await api_external_wallet(client, carol, 1)
    held = await (await api_withdraw(client, carol, service, 1, "10")).json()
    assert await balance(client, carol, 1) == (Decimal("2.5"), Decimal(10))
    pending = await (await client.get("/user/transactions", headers=carol["headers"])).json()
    assert [t["id"] for t in pending["pending_transactions"]] == [held["id"]]
    assert (await api_settle(client, service, "withdraw", held["id"], "paid")).status == 200
    assert await balance(client, carol, 1) == (Decimal("2.5"), 0)
    paid_out = Decimal(10) - commission_fee("10", WITHDRAW_RATE)
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE user_id = $1 AND currency_id = 1",
                             carol["id"]) == paid_out
    again = await (await api_deposit(client, carol, service, 1, "3")).json()
    assert (await api_settle(client, service, "deposit", again["id"], "rejected")).status == 200
    assert (await api_settle(client, service, "deposit", again["id"], "paid")).status == 409

    await assert_ledger_consistent(db)
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out


def _document(now: str, entry: str, postings: list[tuple]) -> str:
    return json.dumps({"now": now, "entries": [{"id": entry, "kind": "probe", "request_id": None,
                                                "user_id": postings[0][0]}],
                       "postings": [{"user_id": u, "entry_id": entry, "wallet_id": w, "currency_id": c, "bucket": b,
                                     "amount": a} for u, w, c, b, a in postings]})


async def test_the_batch_write_refuses_what_the_trigger_refuses_on_every_worker(world, db):
    """A refused batch leaves nothing on any worker, also when its first rows were already written
    on one worker before a row on the other failed (one distributed transaction)."""
    client, service = world["client"], world["service"]
    alice, dave = world["a"][0], world["b"][1]
    await fund(client, alice, service, 3, "10")
    a_wallet, d_wallet = alice["wallets"][3]["id"], dave["wallets"][3]["id"]
    before = await db.fetch("SELECT id, balance, reserved_balance FROM wallets ORDER BY id")
    now = "2026-01-01T00:00:00Z"
    cases = [
        # money from nowhere
        (asyncpg.CheckViolationError, "does not balance", [(alice["id"], a_wallet, 3, "B", "5")]),
        # balanced, overdraws alice (her shard refuses it after dave's wallet was credited)
        (asyncpg.CheckViolationError, "balance_not_negative",
         [(alice["id"], a_wallet, 3, "B", "-1000"), (dave["id"], d_wallet, 3, "B", "1000")]),
        # balanced, spends a hold that does not exist
        (asyncpg.CheckViolationError, "reserved_balance",
         [(alice["id"], a_wallet, 3, "B", "1"), (alice["id"], a_wallet, 3, "R", "-1")]),
        # dave's wallet named with alice as its owner: no such wallet on alice's shard
        (asyncpg.ForeignKeyViolationError, "unknown wallet",
         [(alice["id"], a_wallet, 3, "B", "-1"), (alice["id"], d_wallet, 3, "B", "1")]),
        # dave's wallet in another currency, named as his wallet in this one
        (asyncpg.ForeignKeyViolationError, "unknown wallet",
         [(alice["id"], a_wallet, 3, "B", "-1"), (dave["id"], dave["wallets"][2]["id"], 3, "B", "1")]),
    ]
    for error, message, postings in cases:
        entry = str(uuid.uuid4())
        with pytest.raises(error, match=message):
            await db.fetchval("SELECT walletd_write_batch($1::jsonb)", _document(now, entry, postings))
        assert await db.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", entry) == 0
        assert await db.fetchval("SELECT count(*) FROM postings WHERE entry_id = $1", entry) == 0
    assert await db.fetch("SELECT id, balance, reserved_balance FROM wallets ORDER BY id") == before
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM postings WHERE user_id = $1", alice["id"])
    await assert_ledger_consistent(db)


async def test_a_foreign_claim_on_a_wallet_does_not_hide_it_from_its_owner(world):
    """On Citus a wallet is read from the shard of the owner a command claims: commands of the
    owner and of someone claiming the same wallet, queued together (both run on that wallet's
    actor, so they share batches), each get their own answer."""
    client, service = world["client"], world["service"]
    alice, mallory, bob = world["a"][1], world["b"][0], world["a"][0]  # wallets no other test counts
    await fund(client, alice, service, 2, "20")
    source = alice["wallets"][2]["id"]

    def send(user):
        return client.post("/wallet/transfer", headers=user["headers"], params={
            "source_wallet_id": source, "target_wallet_id": bob["wallets"][2]["id"], "amount": "1"})

    responses = await asyncio.gather(*(send(user) for _ in range(6) for user in (mallory, alice)))
    statuses = [(r.status, (await r.json()).get("code")) for r in responses]
    assert statuses[1::2] == [(200, None)] * 6, statuses  # alice's
    assert statuses[0::2] == [(400, "wallet_not_found")] * 6, statuses  # mallory's
