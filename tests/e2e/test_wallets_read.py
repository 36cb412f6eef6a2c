"""Reading wallets and creating external wallets, in both parameter and every header style."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.conftest import register, register_service

ZERO = "0.0000000000"
HEADER_STYLES = {
    "token-raw": lambda t: {"token": t},
    "token-bearer": lambda t: {"token": f"Bearer {t}"},
    "authorization-bearer": lambda t: {"Authorization": f"Bearer {t}"},
}

_people: dict[str, tuple] = {}


@pytest.fixture
async def pair(client, database_url):
    """Two users registered once per module database; these tests only read their wallets."""
    if database_url not in _people:
        _people[database_url] = (await register(client, "reader"), await register(client, "neighbour"))
    return _people[database_url]


def canonical_uuid(text: str) -> bool:
    return str(uuid.UUID(text)) == text


async def json_ok(resp) -> dict:
    text = await resp.text()
    assert resp.status == 200, text
    assert resp.content_type == "application/json"
    return json.loads(text)


# ---- GET /user/wallets ----------------------------------------------------------------------------

async def test_wallets_one_per_currency_ordered_zero_balances(client, pair, db):
    me, _ = pair
    for style, headers in HEADER_STYLES.items():
        body = await json_ok(await client.get("/user/wallets", headers=headers(me["token"])))
        wallets = body["wallets"]
        assert [w["currency_id"] for w in wallets] == [1, 2, 3], style
        for w in wallets:
            assert w["balance"] == ZERO and w["reserved_balance"] == ZERO, w
            assert w["user_id"] == me["id"]
            assert canonical_uuid(w["id"]) and canonical_uuid(w["user_id"])
            assert isinstance(w["balance"], str)  # never a JSON float
        assert [w["currency"] for w in wallets] == ["USD", "EUR", "RUB"]
    rows = await db.fetch("SELECT id, currency_id FROM wallets WHERE user_id = $1::uuid ORDER BY currency_id", me["id"])
    assert [(str(r["id"]), r["currency_id"]) for r in rows] == [(w["id"], w["currency_id"]) for w in wallets]


async def test_wallets_are_the_callers_own(client, pair):
    me, neighbour = pair
    mine = await json_ok(await client.get("/user/wallets", headers=me["headers"]))
    theirs = await json_ok(await client.get("/user/wallets", headers=neighbour["headers"]))
    assert {w["id"] for w in mine["wallets"]}.isdisjoint({w["id"] for w in theirs["wallets"]})
    assert {w["user_id"] for w in theirs["wallets"]} == {neighbour["id"]}


async def test_wallets_show_a_balance_change(client, db, pair):
    """The balances shown are the stored ones, not a constant: a journal entry moves them."""
    me, _ = pair
    resp = await client.get("/user/wallets", headers=me["headers"])
    target = (await json_ok(resp))["wallets"][1]
    operator = await db.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = $1",
                                 target["currency_id"])
    entry = uuid.uuid4()
    async with db.transaction():
        await db.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
        await db.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) VALUES "
                         "($1, $2, $4, 'B', -1.25), ($1, $3::uuid, $4, 'B', 1.25)",
                         entry, operator, target["id"], target["currency_id"])
    try:
        wallets = (await json_ok(await client.get("/user/wallets", headers=me["headers"])))["wallets"]
        assert wallets[1]["balance"] == "1.2500000000"
        one = await json_ok(await client.get("/user/wallet", params={"wallet_id": target["id"]}, headers=me["headers"]))
        assert one["balance"] == "1.2500000000"
    finally:
        entry = uuid.uuid4()
        async with db.transaction():
            await db.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
            await db.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) VALUES "
                             "($1, $2, $4, 'B', 1.25), ($1, $3::uuid, $4, 'B', -1.25)",
                             entry, operator, target["id"], target["currency_id"])


async def test_service_user_has_no_user_wallets_and_is_refused(client):
    service = await register_service(client)
    resp = await client.get("/user/wallets", headers=service["headers"])
    assert resp.status == 401


# ---- GET /user/wallet -----------------------------------------------------------------------------

async def test_wallet_by_query_and_by_json_body_in_every_header_style(client, pair):
    me, _ = pair
    listed = {w["id"]: w for w in (await json_ok(await client.get("/user/wallets", headers=me["headers"])))["wallets"]}
    for wallet_id, expected in listed.items():
        for style, headers in HEADER_STYLES.items():
            by_query = await json_ok(await client.get("/user/wallet", params={"wallet_id": wallet_id},
                                                      headers=headers(me["token"])))
            by_body = await json_ok(await client.get("/user/wallet", json={"wallet_id": wallet_id},
                                                     headers=headers(me["token"])))
            assert by_query == by_body == expected, style
            for key in ("id", "balance", "reserved_balance", "currency_id", "user_id"):
                assert key in by_query


async def test_wallet_id_in_upper_case_is_the_same_wallet(client, pair):
    me, _ = pair
    wallet_id = me["wallets"][2]["id"]
    body = await json_ok(await client.get("/user/wallet", params={"wallet_id": wallet_id.upper()}, headers=me["headers"]))
    assert body["id"] == wallet_id  # answered in canonical lowercase


async def test_someone_elses_wallet_looks_exactly_like_a_missing_one(client, pair, db):
    me, neighbour = pair
    service = await register_service(client)
    service_wallet = str(await db.fetchval("SELECT id FROM wallets WHERE user_id = $1::uuid AND kind = 'service' "
                                           "AND currency_id = 1", service["id"]))
    operator_wallet = str(await db.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1"))
    probes = [neighbour["wallets"][1]["id"], neighbour["wallets"][3]["id"], service_wallet, operator_wallet]

    async def ask(path, wallet_id, style):
        if style == "query":
            resp = await client.get(path, params={"wallet_id": wallet_id}, headers=me["headers"])
        else:
            resp = await client.get(path, json={"wallet_id": wallet_id}, headers=me["headers"])
        text = await resp.text()
        body = json.loads(text)
        assert body.pop("request_id") == resp.headers["X-Request-ID"]
        return resp.status, body, {k: v for k, v in resp.headers.items()
                                   if k not in ("X-Request-ID", "Date", "Content-Length")}

    for path in ("/user/wallet", "/wallet/transactions"):
        for style in ("query", "body"):
            missing = await ask(path, str(uuid.uuid4()), style)
            assert missing[0] == 404 and missing[1] == {"status": 404, "code": "wallet_not_found", "message": "wallet_not_found"}, missing
            for wallet_id in probes:
                assert await ask(path, wallet_id, style) == missing, (path, style, wallet_id)
    # The owner does see it: the refusals above are about ownership, not a broken lookup.
    resp = await client.get("/user/wallet", params={"wallet_id": neighbour["wallets"][1]["id"]},
                            headers=neighbour["headers"])
    assert resp.status == 200


# ---- POST /user/create/external_wallet --------------------------------------------------------------

async def test_external_wallet_by_query_then_409_then_json_body(client, db):
    me = await register(client, "payout")
    resp = await client.post("/user/create/external_wallet", params={"wallet_name": "visa", "currency_id": "1"},
                             headers={"token": me["token"]})
    created = await json_ok(resp)
    assert set(created) >= {"id", "wallet_name", "currency_id", "amount_withdraw", "card_id", "user_id"}
    assert canonical_uuid(created["id"])
    assert (created["wallet_name"], created["currency_id"], created["amount_withdraw"], created["card_id"],
            created["user_id"]) == ("visa", 1, ZERO, None, me["id"])

    again = await client.post("/user/create/external_wallet", json={"wallet_name": "other", "currency_id": 1},
                              headers={"token": f"Bearer {me['token']}"})
    assert again.status == 409, await again.text()
    body = await again.json()
    assert (body["status"], body["message"]) == (409, "external_wallet_already_exists")

    second = await json_ok(await client.post("/user/create/external_wallet",
                                             json={"wallet_name": "mastercard", "currency_id": 2},
                                             headers=me["headers"]))
    assert (second["wallet_name"], second["currency_id"]) == ("mastercard", 2)
    rows = await db.fetch("SELECT id, wallet_name, currency_id FROM external_wallets WHERE user_id = $1::uuid "
                          "ORDER BY currency_id", me["id"])
    assert [(str(r["id"]), r["wallet_name"], r["currency_id"]) for r in rows] == [
        (created["id"], "visa", 1), (second["id"], "mastercard", 2)]


async def test_external_wallets_are_per_user(client, db):
    a, b = await register(client, "exta"), await register(client, "extb")
    for user in (a, b):
        await json_ok(await client.post("/user/create/external_wallet", json={"wallet_name": "card", "currency_id": 3},
                                        headers=user["headers"]))
    assert await db.fetchval("SELECT count(*) FROM external_wallets WHERE user_id = ANY($1::uuid[]) "
                             "AND currency_id = 3", [a["id"], b["id"]]) == 2


async def test_concurrent_external_wallet_creation_yields_one(client, db):
    me = await register(client, "race")
    responses = await asyncio.gather(*[
        client.post("/user/create/external_wallet", json={"wallet_name": f"card{i}", "currency_id": 2},
                    headers=me["headers"]) for i in range(8)])
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 7, statuses
    assert await db.fetchval("SELECT count(*) FROM external_wallets WHERE user_id = $1::uuid", me["id"]) == 1


async def test_external_wallet_unknown_currency_is_400_and_creates_nothing(client, db):
    me = await register(client, "nocur")
    for kwargs in ({"params": {"wallet_name": "x", "currency_id": "77"}}, {"json": {"wallet_name": "x", "currency_id": 32767}}):
        resp = await client.post("/user/create/external_wallet", headers=me["headers"], **kwargs)
        assert resp.status == 400, await resp.text()
        body = await resp.json()
        assert (body["status"], body["message"]) == (400, "currency_not_found")
    assert await db.fetchval("SELECT count(*) FROM external_wallets WHERE user_id = $1::uuid", me["id"]) == 0
