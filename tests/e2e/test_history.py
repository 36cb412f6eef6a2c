"""History: /user/transactions and /wallet/transactions, newest first, keyset pagination that
visits every record exactly once; pending deposits and withdrawals listed apart."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import (
    SECRETS_KEY,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    fund,
    register,
    register_service,
)

TX_FIELDS = {"id", "from_wallet_id", "from_currency_id", "amount", "to_wallet_id", "to_currency_id", "rate",
             "converted_amount", "type", "status", "timestamp", "user_id"}


@pytest.fixture(scope="module")
async def history_world(database_url):
    """alice with a varied history: settled and rejected deposits, transfers both ways and across
    currencies, withdrawals paid and rejected, one pending deposit and one pending withdrawal."""
    from aiohttp.test_utils import TestClient, TestServer

    from tests.conftest import JWT_SECRET, OPERATOR_KEY
    from walletd.app import create_app
    from walletd.config import Settings

    settings = Settings(database_url=database_url, jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY, pool_size=4,
                        secrets_key=SECRETS_KEY)
    client = TestClient(TestServer(create_app(settings, database_url, JWT_SECRET)))
    await client.start_server()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "1000")
    await fund(client, bob, service, 2, "1000")
    await api_external_wallet(client, alice, 1)
    for i in range(6):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], f"{i + 1}")).status == 200
        assert (await api_transfer(client, bob, 2, alice["wallets"][(i % 3) + 1]["id"], "2")).status == 200
    assert (await api_transfer(client, alice, 1, alice["wallets"][3]["id"], "5")).status == 200
    rejected = await (await api_deposit(client, alice, service, 2, "9")).json()
    assert (await api_settle(client, service, "deposit", rejected["id"], "rejected")).status == 200
    for status in ("paid", "rejected"):
        tx = await (await api_withdraw(client, alice, service, 1, "10")).json()
        assert (await api_settle(client, service, "withdraw", tx["id"], status)).status == 200
    pending_deposit = await (await api_deposit(client, alice, service, 3, "4")).json()
    pending_withdraw = await (await api_withdraw(client, alice, service, 1, "3")).json()
    yield {"client": client, "alice": alice, "bob": bob, "service": service,
           "pending": [pending_withdraw["id"], pending_deposit["id"]]}
    await client.close()


async def expected_ids(db, wallet_ids: list[str]) -> list[str]:
    """Every settled record that touches one of these wallets, newest first (by commit sequence).
    Grouped by id: on Citus a transfer between two users is stored once per side (tests/citus/)."""
    rows = await db.fetch("SELECT id::text FROM transactions WHERE (from_wallet_id = ANY($1::uuid[]) "
                          "OR to_wallet_id = ANY($1::uuid[])) AND status <> 'pending' GROUP BY id ORDER BY min(seq) DESC",
                          wallet_ids)
    return [r[0] for r in rows]


async def walk(client, path: str, headers: dict, limit: int, between=None, **params) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, headers=headers, params=query)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        pages.append(body["transactions"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(body["transactions"]) == limit, "only the last page may be short"
        assert len(pages) < 500, "pagination does not terminate"
        if between is not None:
            await between()


async def test_user_history_pages_visit_every_record_once_newest_first(history_world, db):
    client, alice = history_world["client"], history_world["alice"]
    wallet_ids = [w["id"] for w in alice["wallets"].values()]
    expected = await expected_ids(db, wallet_ids)
    # 3 for the paid deposit, 12 transfers, 1 to herself, 1 rejected deposit, 3 withdrawal records
    assert len(expected) == 20
    for limit in (1, 3, 7, 200):
        pages = await walk(client, "/user/transactions", alice["headers"], limit)
        seen = [tx["id"] for page in pages for tx in page]
        assert seen == expected, f"limit={limit}"
        assert all(len(page) <= limit for page in pages)
    everything = (await (await client.get("/user/transactions", headers=alice["headers"],
                                          params={"limit": 200})).json())["transactions"]
    assert all(TX_FIELDS <= set(tx) for tx in everything)
    timestamps = [tx["timestamp"] for tx in everything]
    assert timestamps == sorted(timestamps, reverse=True)
    types = {tx["type"] for tx in everything}
    assert types == {"deposit", "transfer", "commission", "withdraw"}
    statuses = {(tx["type"], tx["status"]) for tx in everything}
    assert {("deposit", "paid"), ("deposit", "rejected"), ("withdraw", "paid"), ("withdraw", "rejected"),
            ("transfer", "close"), ("commission", "close")} <= statuses


async def test_default_limit_and_limit_bounds(history_world):
    client, alice = history_world["client"], history_world["alice"]
    body = await (await client.get("/user/transactions", headers=alice["headers"])).json()
    assert len(body["transactions"]) == min(50, len(body["transactions"])) and body["transactions"]
    for limit in (0, -1, 201, "x"):
        resp = await client.get("/user/transactions", headers=alice["headers"], params={"limit": limit})
        assert resp.status == 422, (limit, await resp.text())
    for cursor in ("abc", "-1", "1" * 30):
        resp = await client.get("/user/transactions", headers=alice["headers"], params={"cursor": cursor})
        assert resp.status == 422, (cursor, await resp.text())


async def test_wallet_history_pages_visit_every_record_once(history_world, db):
    client, alice = history_world["client"], history_world["alice"]
    for currency, wallet in alice["wallets"].items():
        expected = await expected_ids(db, [wallet["id"]])
        pages = await walk(client, "/wallet/transactions", alice["headers"], 2, wallet_id=wallet["id"])
        seen = [tx["id"] for page in pages for tx in page]
        assert seen == expected, currency
        for tx in (tx for page in pages for tx in page):
            assert wallet["id"] in (tx["from_wallet_id"], tx["to_wallet_id"])


async def test_pagination_is_stable_while_new_records_arrive(history_world, db):
    """A walk started before new movements visits exactly the records that existed at its start:
    newer records land ahead of the cursor, never inside the pages still to come. Its own users:
    the records it adds must not change the shared world the other tests count."""
    client, service = history_world["client"], history_world["service"]
    payer, payee = await register(client, "payer"), await register(client, "payee")
    await fund(client, payer, service, 2, "100")
    for i in range(10):
        assert (await api_transfer(client, payer, 2, payee["wallets"][(i % 3) + 1]["id"], "1")).status == 200
    expected = await expected_ids(db, [w["id"] for w in payee["wallets"].values()])

    async def more():
        assert (await api_transfer(client, payer, 2, payee["wallets"][2]["id"], "1")).status == 200

    pages = await walk(client, "/user/transactions", payee["headers"], 4, between=more)
    seen = [tx["id"] for page in pages for tx in page]
    assert seen == expected and len(pages) == 3
    assert len(await expected_ids(db, [w["id"] for w in payee["wallets"].values()])) == len(expected) + len(pages) - 1


async def test_pending_deposits_and_withdrawals_are_listed_apart(history_world, db):
    client, alice = history_world["client"], history_world["alice"]
    body = await (await client.get("/user/transactions", headers=alice["headers"])).json()
    pending = body["pending_transactions"]
    assert [tx["id"] for tx in pending] == history_world["pending"], "newest first"
    assert {(tx["type"], tx["status"]) for tx in pending} == {("withdraw", "pending"), ("deposit", "pending")}
    assert not {tx["id"] for tx in pending} & {tx["id"] for tx in body["transactions"]}
    # One wallet's view lists only its own pending transactions.
    for currency, wanted in ((1, [history_world["pending"][0]]), (3, [history_world["pending"][1]]), (2, [])):
        wallet_body = await (await client.get("/wallet/transactions", headers=alice["headers"], params={
            "wallet_id": alice["wallets"][currency]["id"]})).json()
        assert [tx["id"] for tx in wallet_body["pending_transactions"]] == wanted
    # bob sees none of alice's pending transactions.
    bob_body = await (await client.get("/user/transactions", headers=history_world["bob"]["headers"])).json()
    assert bob_body["pending_transactions"] == []


async def test_a_settled_transaction_leaves_the_pending_list(make_client, db):
    client = await make_client()
    carol = await register(client, "carol")
    service = await register_service(client)
    tx = await (await api_deposit(client, carol, service, 1, "8")).json()
    body = await (await client.get("/user/transactions", headers=carol["headers"])).json()
    assert [t["id"] for t in body["pending_transactions"]] == [tx["id"]] and body["transactions"] == []
    assert (await api_settle(client, service, "deposit", tx["id"], "paid")).status == 200
    body = await (await client.get("/user/transactions", headers=carol["headers"])).json()
    assert body["pending_transactions"] == []
    assert tx["id"] in [t["id"] for t in body["transactions"]]
    assert body["next_cursor"] is None


async def test_history_of_a_foreign_wallet_is_not_found(history_world):
    client, alice, bob = history_world["client"], history_world["alice"], history_world["bob"]
    for wallet in (bob["wallets"][1]["id"], str(uuid.uuid4())):
        resp = await client.get("/wallet/transactions", headers=alice["headers"], params={"wallet_id": wallet})
        assert resp.status == 404 and (await resp.json())["message"] == "wallet_not_found"


async def test_bob_sees_transfers_to_him_but_not_alices_other_movements(history_world, db):
    client, alice, bob = history_world["client"], history_world["alice"], history_world["bob"]
    pages = await walk(client, "/user/transactions", bob["headers"], 5)
    seen = [tx for page in pages for tx in page]
    assert [tx["id"] for tx in seen] == await expected_ids(db, [w["id"] for w in bob["wallets"].values()])
    alice_wallets = {w["id"] for w in alice["wallets"].values()}
    for tx in seen:
        bob_side = {tx["from_wallet_id"], tx["to_wallet_id"]} & {w["id"] for w in bob["wallets"].values()}
        assert bob_side, tx
    assert any(tx["from_wallet_id"] in alice_wallets for tx in seen)


async def test_history_records_are_exactly_the_responses_that_created_them(make_client):
    client = await make_client()
    alice, bob = await register(client, "exact_a"), await register(client, "exact_b")
    service = await register_service(client)
    await fund(client, alice, service, 1, "50")
    sent = []
    for target, amount in ((bob["wallets"][1]["id"], "1.5"), (bob["wallets"][2]["id"], "2"),
                           (alice["wallets"][3]["id"], "0.0000000001")):
        resp = await client.post("/wallet/transfer", headers=alice["headers"], params={
            "source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": target, "amount": amount})
        assert resp.status == 200, await resp.text()
        sent.append(await resp.json())
    for path, params in (("/wallet/transactions", {"wallet_id": alice["wallets"][1]["id"]}),
                         ("/user/transactions", {})):
        listed = (await (await client.get(path, headers=alice["headers"], params=params)).json())["transactions"]
        by_id = {record["id"]: record for record in listed}
        for record in sent:
            assert by_id[record["id"]] == record


async def test_a_history_record_is_the_record_its_movement_answered(make_client):
    """PostgreSQL renders history records (persistence/history.py), walletd renders first answers
    (domain/records.py): the same keys in the same order with the same values, nulls included."""
    client = await make_client()
    erin, finn = await register(client, "erin"), await register(client, "finn")
    service = await register_service(client)
    await fund(client, erin, service, 1, "100")
    await api_external_wallet(client, erin, 1)
    answers = []
    for target, amount in ((finn["wallets"][1]["id"], "1.5"), (finn["wallets"][2]["id"], "2.25")):
        resp = await api_transfer(client, erin, 1, target, amount)
        assert resp.status == 200, await resp.text()
        answers.append(await resp.json())
    answers.append(await (await api_deposit(client, erin, service, 2, "7")).json())
    answers.append(await (await api_withdraw(client, erin, service, 1, "3")).json())
    body = await (await client.get("/user/transactions", headers=erin["headers"])).json()
    listed = {tx["id"]: tx for tx in body["transactions"] + body["pending_transactions"]}
    assert {answer["type"] for answer in answers} == {"transfer", "deposit", "withdraw"}
    for answer in answers:
        assert list(listed[answer["id"]].items()) == list(answer.items())
