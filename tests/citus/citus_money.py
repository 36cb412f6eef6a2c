"""walletd on Citus: the layout walletd migrate chose, the money paths end to end between users whose
wallets sit on different workers, and the distributed batch write refusing what the single-node
statement trigger refuses, atomically across workers."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.citus.conftest import users_on, worker_of
from tests.conftest import (
    OPERATOR,
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
    wallets_snapshot,
)
from tests.e2e.test_reversal import balance_of, reverse
from tests.oracles import WITHDRAW_RATE, commission_fee, converted
from tests.polling import until
from walletd.persistence import books
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


# ---- what main gained since: stale pendings, reversals, multi-leg transfers, the books ----------


async def placed_pair(db, client, citus_cluster) -> tuple[dict, dict]:
    """Two new users, one on each worker."""
    ports = [w.port for w in citus_cluster.workers]
    placed = await users_on(db, ports, 1, register, client)
    return placed[ports[0]][0], placed[ports[1]][0]


async def test_stale_pendings_are_settled_late_or_ended_by_the_operator(make_client, db, citus_cluster):
    """A deposit and a withdrawal of users on different workers go stale (holds kept); the payment
    service's late `paid` still credits the deposit, the operator ends the withdrawal, and the payment
    service's contradicting `paid` afterwards is a conflict that moves nothing."""
    client = await make_client(pending_ttl_seconds=1.0)
    alice, carol = await placed_pair(db, client, citus_cluster)
    service = await register_service(client)
    await api_external_wallet(client, carol, 1)
    credited = await fund(client, carol, service, 1, "50")
    deposit = await (await api_deposit(client, alice, service, 1, "40")).json()
    withdrawal = await (await api_withdraw(client, carol, service, 1, "30")).json()
    ids = [deposit["id"], withdrawal["id"]]
    await until(lambda: db.fetchval("SELECT count(*) = 2 FROM transactions WHERE id = ANY($1::uuid[]) "
                                    "AND status = 'pending' AND stale_at IS NOT NULL", ids), what="both stale")
    assert await balance(client, carol, 1) == (credited - 30, Decimal(30)), "a stale withdrawal keeps its hold"
    stale = await (await client.get("/service/transactions/stale", headers=service["headers"])).json()
    assert {t["id"] for t in stale["transactions"]} >= set(ids)

    resp = await api_settle(client, service, "deposit", deposit["id"], "paid")
    assert resp.status == 200 and (await resp.json())["status"] == "paid", await resp.text()
    assert await balance(client, alice, 1) == (Decimal(40) - commission_fee("40"), 0)
    resp = await api_settle(client, {"headers": OPERATOR}, "withdraw", withdrawal["id"], "rejected")
    assert resp.status == 200 and (await resp.json())["status"] == "rejected", await resp.text()
    assert await balance(client, carol, 1) == (credited, 0)
    before = await wallets_snapshot(db)
    resp = await api_settle(client, service, "withdraw", withdrawal["id"], "paid")
    body = await resp.json()
    assert resp.status == 409 and body["code"] == "transaction_already_settled", body
    assert body["detail"]["settled_by"] == "operator"
    assert await wallets_snapshot(db) == before
    rows = await db.fetch("SELECT id::text, status, settled_by, count(*) OVER (PARTITION BY id) AS copies "
                          "FROM transactions WHERE id = ANY($1::uuid[])", ids)
    assert {r[0]: (r[1], r[2], r[3]) for r in rows} == {deposit["id"]: ("paid", "service", 1),
                                                        withdrawal["id"]: ("rejected", "operator", 1)}
    await assert_ledger_consistent(db)


async def test_the_operator_reverses_a_transfer_across_shards_once(world, db, citus_cluster):
    client = world["client"]
    alice, carol = await placed_pair(db, client, citus_cluster)
    await fund(client, alice, world["service"], 1, "20")
    a, c = alice["wallets"][1]["id"], carol["wallets"][1]["id"]
    original = await (await api_transfer(client, alice, 1, c, "7.25")).json()
    before = {w: await balance_of(db, w) for w in (a, c)}
    responses = await asyncio.gather(*(reverse(client, original["id"]) for _ in range(4)))
    statuses = sorted([(r.status, (await r.json()).get("code")) for r in responses])
    assert statuses == [(200, None)] + [(409, "already_reversed")] * 3, statuses
    reversal = [await r.json() for r in responses if r.status == 200][0]
    assert (reversal["type"], reversal["parent_id"], reversal["from_wallet_id"], reversal["to_wallet_id"]) == (
        "reversal", original["id"], c, a)
    assert await balance_of(db, a) == before[a] + Decimal("7.25")
    assert await balance_of(db, c) == before[c] - Decimal("7.25")
    # Both parties see it, each on its own shard; the original stays as it was.
    for user in (alice, carol):
        page = await (await client.get("/user/transactions", headers=user["headers"])).json()
        assert [t["id"] for t in page["transactions"]].count(reversal["id"]) == 1, user["username"]
    owners = await db.fetch("SELECT owner_id::text FROM transactions WHERE id = $1", uuid.UUID(reversal["id"]))
    assert sorted(r[0] for r in owners) == sorted([alice["id"], carol["id"]])
    # The database's own guard: a second reversal row of the same original, written by hand on the
    # original's owner's shard, is refused by the unique index rebuilt with the owner.
    with pytest.raises(asyncpg.UniqueViolationError, match="transactions_one_reversal"):
        await db.execute(
            "INSERT INTO transactions (owner_id, id, type, status, amount, rate, converted_amount, user_id, parent_id) "
            "VALUES ($1, $2, 'reversal', 'close', 1, 1, 1, $1, $3)",
            uuid.UUID(alice["id"]), uuid.uuid4(), uuid.UUID(original["id"]))
    await assert_ledger_consistent(db)


async def test_a_multi_leg_transfer_lands_on_both_workers_in_one_entry(world, db):
    client, ports = world["client"], world["ports"]
    placed = await users_on(db, ports, 2, register, client)
    (alice, bob), (carol, dave) = placed[ports[0]], placed[ports[1]]
    await fund(client, alice, world["service"], 1, "30")
    legs = [{"source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": target["wallets"][1]["id"],
             "amount": amount} for target, amount in ((bob, "1.5"), (carol, "2.25"), (dave, "3"))]
    before = {u["id"]: await balance(client, u, 1) for u in (alice, bob, carol, dave)}
    refused = legs + [{**legs[0], "amount": "1000"}]  # the last leg overdraws: nothing moves on either worker
    resp = await client.post("/wallet/transfers", headers=alice["headers"], json={"transfers": refused})
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "legs_refused", body
    assert {u["id"]: await balance(client, u, 1) for u in (alice, bob, carol, dave)} == before
    key = {"Idempotency-Key": uuid.uuid4().hex}
    resp = await client.post("/wallet/transfers", headers={**alice["headers"], **key}, json={"transfers": legs})
    body = await resp.json()
    assert resp.status == 200, body
    records = body["transfers"]
    replay = await client.post("/wallet/transfers", headers={**alice["headers"], **key}, json={"transfers": legs})
    assert replay.status == 200 and await replay.json() == body
    entries = await db.fetch("SELECT DISTINCT entry_id FROM transactions WHERE id = ANY($1::uuid[])",
                             [r["id"] for r in records])
    assert len(entries) == 1, "one journal entry for every leg"
    for user, amount in ((bob, "1.5"), (carol, "2.25"), (dave, "3")):
        assert await balance(client, user, 1) == (before[user["id"]][0] + Decimal(amount), 0)
        page = await (await client.get("/wallet/transactions", headers=user["headers"],
                                       params={"wallet_id": user["wallets"][1]["id"]})).json()
        assert [t["id"] for t in page["transactions"]] == [r["id"] for r in records if
                                                            r["to_wallet_id"] == user["wallets"][1]["id"]]
    assert await balance(client, alice, 1) == (before[alice["id"]][0] - Decimal("6.75"), 0)
    await assert_ledger_consistent(db)


async def test_statement_and_balance_at_an_instant_of_a_wallet_on_a_worker(world, db, citus_cluster):
    """A user's wallet on one worker, moved by a deposit, a transfer from the other worker and one
    to it, a withdrawal: balances at instants between the movements equal replaying its postings,
    the statement's pages and CSV agree with each other and with the balances, and read from the
    owner's shard alone; a payment service's wallet statement names its customers' records."""
    client = world["client"]
    service = await register_service(client)  # its own: its statement lists only this test's deposits
    alice, carol = await placed_pair(db, client, citus_cluster)
    await api_external_wallet(client, carol, 1)
    await fund(client, alice, service, 1, "10")
    wallet = carol["wallets"][1]["id"]
    instants = [(await db.fetchval("SELECT now()"))]
    await fund(client, carol, service, 1, "100")
    instants.append(await db.fetchval("SELECT clock_timestamp()"))
    assert (await api_transfer(client, alice, 1, wallet, "4")).status == 200
    instants.append(await db.fetchval("SELECT clock_timestamp()"))
    assert (await api_transfer(client, carol, 1, alice["wallets"][1]["id"], "2.5")).status == 200
    held = await (await api_withdraw(client, carol, service, 1, "11")).json()
    instants.append(await db.fetchval("SELECT clock_timestamp()"))
    for at in instants:
        resp = await client.get("/user/wallet/balance", headers=carol["headers"],
                                params={"wallet_id": wallet, "at": at.isoformat()})
        body = await resp.json()
        assert resp.status == 200, body
        expected = await db.fetchrow(
            "SELECT coalesce(sum(amount) FILTER (WHERE bucket = 'B'), 0), "
            "coalesce(sum(amount) FILTER (WHERE bucket = 'R'), 0) "
            "FROM postings WHERE user_id = $1 AND wallet_id = $2 AND created_at <= $3",
            uuid.UUID(carol["id"]), uuid.UUID(wallet), at)
        assert (Decimal(body["balance"]), Decimal(body["reserved_balance"])) == tuple(expected), at
    resp = await client.get("/user/wallet/balance", headers=alice["headers"], params={"wallet_id": wallet})
    assert resp.status == 404 and (await resp.json())["code"] == "wallet_not_found"
    plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + books._BALANCE_AT_CITUS, uuid.UUID(wallet),
                                                   instants[1], uuid.UUID(carol["id"]), ["user"]))
    assert "Task Count: 1" in plan, plan  # the owner's shard only

    pages, cursor = [], None
    while True:
        params = {"wallet_id": wallet, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/user/wallet/statement", headers=carol["headers"], params=params)).json()
        pages.append(page)
        cursor = page["next_cursor"]
        if not cursor:
            break
    lines = [line for page in pages for line in page["entries"]]
    assert [(line["type"], line["amount"]) for line in lines] == [
        ("deposit", "99.0000000000"), ("transfer", "4.0000000000"), ("transfer", "-2.5000000000"),
        ("withdraw", "-11.0000000000")]
    assert lines[-1]["transaction_id"] == held["id"] and lines[-1]["status"] == "pending"
    first = pages[0]
    assert Decimal(first["opening_balance"]) + sum(Decimal(line["amount"]) for line in lines) == Decimal(
        first["closing_balance"]) == Decimal("89.5")
    resp = await client.get("/user/wallet/statement", headers=carol["headers"],
                            params={"wallet_id": wallet, "format": "csv", "to": first["to"]})
    rows = list(csv.reader(io.StringIO((await resp.read()).decode(), newline="")))
    fields = ["transaction_id", "type", "status", "amount", "balance_after", "timestamp"]
    assert rows[0] == fields and rows[1:] == [[line[f] or "" for f in fields] for line in lines]

    # The payment service's wallet: its commissions name records on its customers' shards.
    service_wallets = (await (await client.get("/service/wallets", headers=service["headers"])).json())["wallets"]
    mine = next(w["id"] for w in service_wallets if w["kind"] == "service" and w["currency_id"] == 1)
    page = await (await client.get("/user/wallet/statement", headers=service["headers"],
                                   params={"wallet_id": mine})).json()
    assert [line["type"] for line in page["entries"]] == ["deposit", "deposit"]
    assert all(line["transaction_id"] and line["status"] == "paid" for line in page["entries"])
    await assert_ledger_consistent(db)
