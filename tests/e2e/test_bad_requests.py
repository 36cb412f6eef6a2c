"""Bad input never yields a 500: every refusal is a 4xx JSON error {status, message, ...}."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import PASSWORD, register, unique

LIMIT = 64 * 1024


async def error_body(resp, status: int) -> dict:
    """The response is a JSON error with the expected status, mirrored in the body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", (resp.content_type, text)
    body = json.loads(text)
    assert body["status"] == status, body
    assert isinstance(body["message"], str) and body["message"], body
    assert body.get("request_id") == resp.headers["X-Request-ID"]
    for leak in ("Traceback", "asyncpg", "SELECT ", "INSERT ", "violates", "duplicate key"):
        assert leak not in text, text
    return body


def error_fields(body: dict) -> set[str]:
    assert isinstance(body.get("errors"), list) and body["errors"], body
    return {item["loc"] for item in body["errors"]}


_users: dict[str, dict] = {}


@pytest.fixture
async def user(client, database_url):
    """One registered user per module database (argon2 makes registering costly); tests that
    create external wallets register their own, as those are one per user and currency."""
    if database_url not in _users:
        _users[database_url] = await register(client, "bad")
    return _users[database_url]


@pytest.fixture
async def fresh_user(client):
    return await register(client, "fresh")


# ---- malformed bodies ------------------------------------------------------------------------------

MALFORMED = [b"{", b'{"username": "x",}', b"{'username': 'x'}", b"nul", b'{"a": }', b"\x7b\x22", b'"unterminated']


async def test_malformed_json_is_400(client, user):
    for path, headers in (("/auth/login", {}), ("/auth/register", {}), ("/user/create/external_wallet", user["headers"])):
        for raw in MALFORMED:
            resp = await client.post(path, data=raw, headers={**headers, "Content-Type": "application/json"})
            body = await error_body(resp, 400)
            assert "JSON" in body["message"], (path, raw, body)


async def test_json_that_is_not_an_object_is_400(client, user):
    for raw in (b"[]", b'[{"username": "x", "password": "y"}]', b"42", b'"text"', b"null", b"true"):
        for path, headers in (("/auth/login", {}), ("/user/wallet", user["headers"])):
            resp = await client.request("POST" if path == "/auth/login" else "GET", path, data=raw,
                                        headers={**headers, "Content-Type": "application/json"})
            body = await error_body(resp, 400)
            assert "object" in body["message"], (path, raw, body)


async def test_deeply_nested_json_is_a_client_error(client):
    raw = b'{"username": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    resp = await client.post("/auth/login", data=raw, headers={"Content-Type": "application/json"})
    body = await error_body(resp, resp.status)
    assert 400 <= resp.status < 500, body


async def test_body_that_is_not_utf8_is_a_client_error(client):
    resp = await client.post("/auth/login", data=b'{"username": "\xff\xfe", "password": "x"}',
                             headers={"Content-Type": "application/json"})
    assert 400 <= resp.status < 500, await resp.text()
    await error_body(resp, resp.status)


async def test_unknown_charset_is_a_client_error(client):
    resp = await client.post("/auth/login", data=b'{"username": "abc", "password": "x"}',
                             headers={"Content-Type": "application/json; charset=no-such-charset"})
    assert 400 <= resp.status < 500, await resp.text()
    await error_body(resp, resp.status)


async def test_form_encoded_body_is_415(client):
    resp = await client.post("/auth/login", data={"username": "abc", "password": "x"})
    await error_body(resp, 415)


async def test_empty_body_falls_back_to_the_query_string(client):
    resp = await client.post("/auth/login", params={"username": "nobody_here", "password": "x"}, data=b"",
                             headers={"Content-Type": "application/json"})
    body = await error_body(resp, 401)
    assert body["message"] == "Invalid credentials"


# ---- wrong types and values --------------------------------------------------------------------------

LOGIN_TYPE_ERRORS = [
    ({"username": 123, "password": "x"}, "username"),
    ({"username": ["a", "b"], "password": "x"}, "username"),
    ({"username": {"$ne": None}, "password": "x"}, "username"),
    ({"username": "abc", "password": None}, "password"),
    ({"username": "abc", "password": True}, "password"),
    ({"username": "abc"}, "password"),
    ({}, "username"),
    ({"username": "x" * 65, "password": "x"}, "username"),
    ({"username": "abc", "password": "x" * 257}, "password"),
]


async def test_login_with_wrong_types_is_422_listing_the_field(client):
    for payload, field in LOGIN_TYPE_ERRORS:
        body = await error_body(await client.post("/auth/login", json=payload), 422)
        assert field in error_fields(body), (payload, body)
        assert field in body["message"], (payload, body)


EXTERNAL_TYPE_ERRORS = [
    ({"wallet_name": "card", "currency_id": "abc"}, "currency_id"),
    ({"wallet_name": "card", "currency_id": [1]}, "currency_id"),
    ({"wallet_name": "card", "currency_id": 1.5}, "currency_id"),
    ({"wallet_name": "card", "currency_id": 10 ** 40}, "currency_id"),
    ({"wallet_name": "card", "currency_id": 0}, "currency_id"),
    ({"wallet_name": "card", "currency_id": -1}, "currency_id"),
    ({"wallet_name": "card", "currency_id": None}, "currency_id"),
    ({"wallet_name": {"a": 1}, "currency_id": 1}, "wallet_name"),
    ({"wallet_name": "", "currency_id": 1}, "wallet_name"),
    ({"wallet_name": "w" * 101, "currency_id": 1}, "wallet_name"),
    ({"currency_id": 1}, "wallet_name"),
]


async def test_external_wallet_with_wrong_types_is_422(client, user, db):
    for payload, field in EXTERNAL_TYPE_ERRORS:
        resp = await client.post("/user/create/external_wallet", json=payload, headers=user["headers"])
        body = await error_body(resp, 422)
        assert field in error_fields(body), (payload, body)
    assert await db.fetchval("SELECT count(*) FROM external_wallets WHERE user_id = $1::uuid", user["id"]) == 0


async def test_nan_and_infinity_literals_are_422(client, user):
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        resp = await client.post("/user/create/external_wallet", headers={**user["headers"], "Content-Type": "application/json"},
                                 data=b'{"wallet_name": "card", "currency_id": ' + literal + b"}")
        assert "currency_id" in error_fields(await error_body(resp, 422))


async def test_invalid_wallet_ids_are_422(client, user):
    for wallet_id in ("not-a-uuid", "", "123", "' OR 1=1 --", str(uuid.uuid4()) + "0",
                      "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "%00", "{" + "1" * 32 + "}x"):
        resp = await client.get("/user/wallet", params={"wallet_id": wallet_id}, headers=user["headers"])
        body = await error_body(resp, 422)
        assert error_fields(body) == {"wallet_id"}, (wallet_id, body)


async def test_invalid_uuid_in_a_json_body_is_422(client, user):
    for value in ("nope", 12345, ["a"], {"id": "x"}, None):
        resp = await client.get("/user/wallet", json={"wallet_id": value}, headers=user["headers"])
        assert error_fields(await error_body(resp, 422)) == {"wallet_id"}


async def test_invalid_uuid_on_wallet_history_is_422(client, user):
    resp = await client.get("/wallet/transactions", params={"wallet_id": "abc"}, headers=user["headers"])
    assert "wallet_id" in error_fields(await error_body(resp, 422))


async def test_unknown_currency_on_external_wallet_is_400(client, user):
    resp = await client.post("/user/create/external_wallet", params={"wallet_name": "card", "currency_id": "999"},
                             headers=user["headers"])
    body = await error_body(resp, 400)
    assert body["message"] == "currency_not_found"


async def test_nul_characters_in_login_are_never_500(client):
    for evil in ("\x00", "ab\x00cd"):
        resp = await client.post("/auth/login", json={"username": evil, "password": evil})
        assert 400 <= resp.status < 500, await resp.text()
        await error_body(resp, resp.status)
        resp = await client.get("/service/auth/login", params={"username": evil, "password": "x"})
        assert 400 <= resp.status < 500, await resp.text()
        await error_body(resp, resp.status)


async def test_unpaired_surrogates_and_escaped_nul_in_json_are_422(client):
    for raw in (b'{"username": "\\ud800", "password": "x"}', b'{"username": "abc", "password": "\\udfff\\ud800"}',
                b'{"username": "a\\u0000b", "password": "x"}'):
        resp = await client.post("/auth/login", data=raw, headers={"Content-Type": "application/json"})
        assert error_fields(await error_body(resp, 422)) & {"username", "password"}, raw


async def test_unstorable_password_at_registration_is_422_not_500(client):
    name = unique("sur")
    raw = json.dumps({"username": name, "email": f"{name}@example.com", "password": "Str0ng!pass\ud800"}).encode()
    resp = await client.post("/auth/register", data=raw,
                             headers={"Content-Type": "application/json"})
    assert error_fields(await error_body(resp, 422)) == {"password"}


async def test_invalid_percent_encoding_in_query_is_never_500(client):
    resp = await client.get("/service/auth/login?username=%ff%fe&password=%c3%28")
    assert 400 <= resp.status < 500, await resp.text()
    await error_body(resp, resp.status)


async def test_nul_in_an_external_wallet_name_is_never_500(client, user, db):
    resp = await client.post("/user/create/external_wallet", json={"wallet_name": "my\x00card", "currency_id": 2},
                             headers=user["headers"])
    assert 400 <= resp.status < 500, await resp.text()
    await error_body(resp, resp.status)
    assert await db.fetchval("SELECT count(*) FROM external_wallets WHERE user_id = $1::uuid", user["id"]) == 0


async def test_nul_in_registration_is_never_500(client):
    name = unique("nul")
    resp = await client.post("/auth/register", json={"username": name, "email": f"{name}@example.com",
                                                     "password": "Str0ng!\x00pass"})
    # Either refused cleanly or accepted; never a server error.
    assert resp.status in (200, 422), await resp.text()


async def test_basic_auth_with_nul_is_never_500(client):
    import base64
    raw = base64.b64encode(b"ab\x00c:pass\x00word").decode()
    resp = await client.get("/user/get/token", headers={"Authorization": f"Basic {raw}"})
    await error_body(resp, 401)


# ---- sizes -------------------------------------------------------------------------------------------

async def test_oversized_body_is_413_json(client):
    raw = json.dumps({"username": "abc", "password": "x", "pad": "p" * (LIMIT + 10)}).encode()
    body = await error_body(await client.post("/auth/login", data=raw, headers={"Content-Type": "application/json"}), 413)
    assert "request_id" in body


async def test_oversized_body_on_register_and_authenticated_endpoints_is_413(client, fresh_user):
    user = fresh_user
    pad = "p" * (LIMIT + 1)
    resp = await client.post("/auth/register", json={"username": "abc_def", "email": "a@example.com",
                                                     "password": PASSWORD, "pad": pad})
    await error_body(resp, 413)
    resp = await client.post("/user/create/external_wallet", headers=user["headers"],
                             json={"wallet_name": "card", "currency_id": 1, "pad": pad})
    await error_body(resp, 413)
    # Nothing was created by the refused request.
    resp = await client.post("/user/create/external_wallet", headers=user["headers"],
                             json={"wallet_name": "card", "currency_id": 1})
    assert resp.status == 200, await resp.text()


async def test_a_body_just_under_the_limit_is_read(client):
    # Unknown fields are ignored, so a padded body still reaches the credential check.
    raw = json.dumps({"username": "nobody_here", "password": "x", "pad": "p" * (LIMIT - 200)}).encode()
    assert len(raw) < LIMIT
    body = await error_body(await client.post("/auth/login", data=raw, headers={"Content-Type": "application/json"}), 401)
    assert body["message"] == "Invalid credentials"


# ---- query string versus body -----------------------------------------------------------------------

async def test_conflicting_query_and_body_values_are_refused(client, user, db):
    resp = await client.post("/user/create/external_wallet", headers=user["headers"],
                             params={"wallet_name": "card", "currency_id": "1"},
                             json={"wallet_name": "card", "currency_id": 2})
    body = await error_body(resp, 400)
    assert "currency_id" in body["message"]
    resp = await client.post("/auth/login", params={"username": "alice_one"},
                             json={"username": "alice_two", "password": "x"})
    body = await error_body(resp, 400)
    assert "username" in body["message"]
    # Neither value was acted on.
    assert await db.fetchval("SELECT count(*) FROM external_wallets WHERE user_id = $1::uuid", user["id"]) == 0


async def test_the_same_value_in_query_and_body_is_accepted(client, fresh_user):
    user = fresh_user
    resp = await client.post("/user/create/external_wallet", headers=user["headers"],
                             params={"wallet_name": "card", "currency_id": "3"},
                             json={"wallet_name": "card", "currency_id": 3})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["currency_id"] == 3


async def test_query_and_body_parameters_are_merged(client, fresh_user):
    user = fresh_user
    resp = await client.post("/user/create/external_wallet", headers=user["headers"],
                             params={"wallet_name": "split"}, json={"currency_id": 2})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["wallet_name"], body["currency_id"]) == ("split", 2)


async def test_repeated_query_parameter_is_400(client, user):
    resp = await client.get("/user/wallet?wallet_id=%s&wallet_id=%s" % (uuid.uuid4(), uuid.uuid4()),
                            headers=user["headers"])
    body = await error_body(resp, 400)
    assert "wallet_id" in body["message"]


# ---- routing -----------------------------------------------------------------------------------------

async def test_unknown_path_is_404_json(client):
    await error_body(await client.get("/no/such/endpoint"), 404)


async def test_wrong_method_is_405_json_with_allow(client):
    await error_body(await client.get("/auth/register"), 405)
    resp = await client.delete("/user/wallets")
    await error_body(resp, 405)
    assert "GET" in resp.headers.get("Allow", "")
