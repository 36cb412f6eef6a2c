"""Bad input changes nothing: every refused money request answers a clear 4xx JSON error and the
wallets are byte-for-byte what they were (a full SELECT of the table before and after)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest

from tests.conftest import (
    OPERATOR,
    SECRETS_KEY,
    api_external_wallet,
    balance,
    fund,
    register,
    register_service,
    wallets_snapshot,
)

BAD_AMOUNTS = [
    "0", "0.0", "-0", "-1", "-0.0000000001", "NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "1e400",
    "-1e400", "-1e100", "1e16", "1000000000000000.0000000001", "1000000000000000.00000000006",
    "1000000000000001", "0.00000000005", "0.000000000049999", "1e-11", "", " ", "abc", "1,5", "0x1A", "1/2",
    "١٢٣٫٤", "١٢٣", "1_000", "1 000", "1" * 70,
]
# JSON bodies carrying amounts a query string cannot: non-numbers, NaN literals, huge exponents.
BAD_JSON_AMOUNTS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e100", "-0.0", "0", "true", "null", "[1]",
                    '{"v": 1}', "0.00000000005", "1E+16"]


@pytest.fixture(scope="module")
async def world(database_url, aiohttp_client_module):
    client = aiohttp_client_module
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    await fund(client, alice, service, 2, "100")
    tx = await (await client.post("/wallet/deposit", headers=alice["headers"], params={
        "service_user_id": service["id"], "wallet_id": alice["wallets"][1]["id"], "amount": "5"})).json()
    await api_external_wallet(client, alice, 1)
    return {"client": client, "alice": alice, "bob": bob, "service": service, "pending_deposit": tx["id"]}


@pytest.fixture(scope="module")
async def aiohttp_client_module(database_url):
    """One app for the whole module: these tests only read and refuse."""
    from aiohttp.test_utils import TestClient, TestServer

    from tests.conftest import JWT_SECRET, OPERATOR_KEY
    from walletd.app import create_app
    from walletd.config import Settings

    settings = Settings(database_url=database_url, jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY, pool_size=4,
                        secrets_key=SECRETS_KEY)
    client = TestClient(TestServer(create_app(settings, database_url, JWT_SECRET)))
    await client.start_server()
    yield client
    await client.close()


def money_requests(w: dict, amount) -> list[tuple[str, str, dict, dict]]:
    """(method, path, headers, params) of every request that takes an amount."""
    alice, service = w["alice"], w["service"]
    return [
        ("POST", "/wallet/transfer", alice["headers"], {"source_wallet_id": alice["wallets"][1]["id"],
                                                         "target_wallet_id": w["bob"]["wallets"][1]["id"],
                                                         "amount": amount}),
        ("POST", "/wallet/deposit", alice["headers"], {"service_user_id": service["id"],
                                                        "wallet_id": alice["wallets"][1]["id"], "amount": amount}),
        ("POST", "/wallet/withdraw", alice["headers"], {"service_user_id": service["id"],
                                                         "from_wallet_id": alice["wallets"][1]["id"],
                                                         "amount": amount}),
        ("POST", "/wallet/exchange", alice["headers"], {"from_currency": 1, "to_currency": 2, "amount": amount}),
        ("POST", "/service/exchange-rates/get-conversion", service["headers"],
         {"from_currency": "USD", "to_currency": "EUR", "amount": amount}),
        ("POST", "/service/exchange-rates/set", OPERATOR,
         {"from_currency": 1, "to_currency": 2, "rate": amount}),
    ]


NOT_MINE = ("wallet_not_found", "Wrong wallet ID or it is not your wallet ID")


async def state(db) -> tuple:
    return (await wallets_snapshot(db), await db.fetchval("SELECT count(*) FROM transactions"),
            await db.fetchval("SELECT count(*) FROM journal_entries"),
            await db.fetch("SELECT * FROM exchange_rates ORDER BY 1, 2"),
            await db.fetch("SELECT * FROM external_wallets ORDER BY id"))


async def expect_error(resp, status: int, code: str | None = None, message: str | None = None) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    body = json.loads(text)
    assert body["status"] == status and isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["code"] == code, body
    if message is not None:
        assert body["message"] == message, body
    if code == "invalid_amount":  # the original's text first, then why
        assert body["message"].startswith("Invalid amount: "), body
    for leak in ("Traceback", "asyncpg", "SELECT", "argon2", "eyJ"):
        assert leak not in text
    return body


async def test_bad_amounts_in_the_query_string_change_nothing(world, db):
    client = world["client"]
    before = await state(db)
    for amount in BAD_AMOUNTS:
        for method, path, headers, params in money_requests(world, amount):
            resp = await client.request(method, path, headers=headers, params=params)
            await expect_error(resp, 400, "invalid_amount")
    assert await state(db) == before


async def test_bad_amounts_in_a_json_body_change_nothing(world, db):
    client = world["client"]
    before = await state(db)
    for raw in BAD_JSON_AMOUNTS:
        for method, path, headers, params in money_requests(world, "__AMOUNT__"):
            body = json.dumps(params).replace('"__AMOUNT__"', raw)
            assert raw in body
            resp = await client.request(method, path, data=body,
                                        headers={**headers, "Content-Type": "application/json"})
            await expect_error(resp, 400, "invalid_amount")
    assert await state(db) == before


async def test_more_than_ten_decimals_round_half_even(world, db):
    client, alice, bob = world["client"], world["alice"], world["bob"]
    before = await balance(client, bob, 2)
    for raw, moved in [("0.00000000015", "0.0000000002"), ("0.00000000025", "0.0000000002"),
                       ("0.000000000250000001", "0.0000000003"), ("1.23456789015", "1.2345678902")]:
        resp = await client.post("/wallet/transfer", headers=alice["headers"], params={
            "source_wallet_id": alice["wallets"][2]["id"], "target_wallet_id": bob["wallets"][2]["id"],
            "amount": raw})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["amount"] == moved
        after = await balance(client, bob, 2)
        assert after[0] - before[0] == Decimal(moved)
        before = after
    quote = await (await client.post("/wallet/exchange", headers=alice["headers"], params={
        "from_currency": 1, "to_currency": 1, "amount": "0.00000000035"})).json()
    assert quote["amount_int"] == "0.0000000004" and quote["amount_ext"] == "0.0000000004"


async def test_unknown_foreign_and_identical_wallets_change_nothing(world, db):
    client, alice, bob, service = world["client"], world["alice"], world["bob"], world["service"]
    svc_wallet = await db.fetchval("SELECT id::text FROM wallets WHERE user_id = $1 AND kind = 'service' "
                                   "AND currency_id = 1", service["id"])
    operator = await db.fetchval("SELECT id::text FROM wallets WHERE kind = 'operator' AND currency_id = 1")
    nowhere = str(uuid.uuid4())
    own, other = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    before = await state(db)
    cases = [
        ({"source_wallet_id": nowhere, "target_wallet_id": other}, 400, *NOT_MINE),
        ({"source_wallet_id": other, "target_wallet_id": own}, 400, *NOT_MINE),
        ({"source_wallet_id": svc_wallet, "target_wallet_id": own}, 400, *NOT_MINE),
        ({"source_wallet_id": own, "target_wallet_id": nowhere}, 400, "target_wallet_not_found", "target_wallet_id does not exist"),
        ({"source_wallet_id": own, "target_wallet_id": svc_wallet}, 400, "target_wallet_not_found", "target_wallet_id does not exist"),
        ({"source_wallet_id": own, "target_wallet_id": operator}, 400, "target_wallet_not_found", "target_wallet_id does not exist"),
        ({"source_wallet_id": own, "target_wallet_id": own}, 400, "same_wallet", None),
        ({"source_wallet_id": "not-a-uuid", "target_wallet_id": other}, 422, "validation_failed", None),
        ({"source_wallet_id": own}, 422, "validation_failed", None),
    ]
    for params, status, code, message in cases:
        resp = await client.post("/wallet/transfer", headers=alice["headers"], params={"amount": "1", **params})
        await expect_error(resp, status, code, message)
    # Deposits and withdrawals to wallets that are not the caller's, and unknown services.
    for path, field in (("/wallet/deposit", "wallet_id"), ("/wallet/withdraw", "from_wallet_id")):
        for wallet in (other, nowhere, svc_wallet):
            resp = await client.post(path, headers=alice["headers"], params={
                "service_user_id": service["id"], field: wallet, "amount": "1"})
            await expect_error(resp, 400, *NOT_MINE)
        resp = await client.post(path, headers=alice["headers"], params={
            "service_user_id": nowhere, field: own, "amount": "1"})
        await expect_error(resp, 400, "service_wallet_not_found")
    assert await state(db) == before


async def test_unknown_currencies_change_nothing(world, db):
    client, alice, service = world["client"], world["alice"], world["service"]
    before = await state(db)
    await expect_error(await client.post("/wallet/exchange", headers=alice["headers"], params={
        "from_currency": 1, "to_currency": 99, "amount": "1"}), 400, "currency_not_found")
    await expect_error(await client.post("/wallet/exchange", headers=alice["headers"], params={
        "from_currency": 0, "to_currency": 1, "amount": "1"}), 422)
    await expect_error(await client.post("/service/exchange-rates/get-conversion", headers=service["headers"],
                                         params={"from_currency": "XXX", "to_currency": "EUR", "amount": "1"}),
                       400, "currency_not_found")
    await expect_error(await client.post("/service/exchange-rates/set", headers=OPERATOR, params={
        "from_currency": 1, "to_currency": 99, "rate": "2"}), 400, "currency_not_found")
    await expect_error(await client.post("/service/exchange-rates/set", headers=OPERATOR, params={
        "from_currency": 2, "to_currency": 2, "rate": "2"}), 400)
    await expect_error(await client.post("/service/commission-rates", headers=service["headers"], params={
        "currency_id": 99, "deposit_rate": "0.01", "withdraw_rate": "0.02"}), 400, "currency_not_found")
    await expect_error(await client.post("/user/create/external_wallet", headers=alice["headers"], params={
        "wallet_name": "x", "currency_id": 99}), 400, "currency_not_found")
    assert await state(db) == before


async def test_bad_commission_rates_and_settlements_change_nothing(world, db):
    client, service, alice = world["client"], world["service"], world["alice"]
    before = await state(db)
    rates = await db.fetch("SELECT * FROM commission_rates ORDER BY 1, 2")
    for deposit_rate in ("1", "-0.01", "NaN", "0.00000000001", "abc"):
        resp = await client.post("/service/commission-rates", headers=service["headers"], params={
            "currency_id": 1, "deposit_rate": deposit_rate, "withdraw_rate": "0.02"})
        await expect_error(resp, 422)
    for params in ({"transaction_id": world["pending_deposit"], "new_status": "close"},
                   {"transaction_id": world["pending_deposit"], "new_status": ""},
                   {"transaction_id": "nope", "new_status": "paid"},
                   {"new_status": "paid"}):
        resp = await client.put("/service/transaction/deposit", headers=service["headers"], params=params)
        await expect_error(resp, 422)
    resp = await client.put("/service/transaction/deposit", headers=alice["headers"],
                            params={"transaction_id": world["pending_deposit"], "new_status": "paid"})
    assert resp.status == 401
    assert await db.fetch("SELECT * FROM commission_rates ORDER BY 1, 2") == rates
    assert await state(db) == before
    assert await db.fetchval("SELECT status FROM transactions WHERE id = $1", world["pending_deposit"]) == "pending"


async def test_ambiguous_and_unauthenticated_requests_change_nothing(world, db):
    client, alice, bob = world["client"], world["alice"], world["bob"]
    before = await state(db)
    params = {"source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": bob["wallets"][1]["id"]}
    # The same parameter twice, or query and body disagreeing: refused, never guessed.
    resp = await client.post("/wallet/transfer?amount=1&amount=2", headers=alice["headers"], params=params)
    await expect_error(resp, 400, "parameter_conflict")
    resp = await client.post("/wallet/transfer", headers=alice["headers"], params={**params, "amount": "1"},
                             json={"amount": "2"})
    await expect_error(resp, 400, "parameter_conflict")
    resp = await client.post("/wallet/transfer", headers={**alice["headers"], "Content-Type": "application/json"},
                             params={**params, "amount": "1"}, data="{not json")
    assert 400 <= resp.status < 500
    for headers, code in (({}, "token_missing"), ({"Authorization": "Bearer nope"}, "token_invalid"),
                          (world["service"]["headers"], "wrong_role")):
        resp = await client.post("/wallet/transfer", headers=headers, params={**params, "amount": "1"})
        await expect_error(resp, 401, code)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), code
    assert await state(db) == before
