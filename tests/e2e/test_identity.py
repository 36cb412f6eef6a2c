"""Identity: registration, login in every parameter and header style, service users, token attacks."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from datetime import datetime

import jwt
import pytest

from tests.conftest import JWT_SECRET, OPERATOR_KEY, PASSWORD, register, register_service, unique
from walletd.config import ConfigError, Settings

LEAKS = ("SELECT", "INSERT", "UPDATE ", "violates", "duplicate key", "constraint", "asyncpg", "Key (",
         "users_", "Traceback", "$argon2")


async def error_body(resp, status: int) -> dict:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    body = json.loads(text)
    assert body["status"] == status and isinstance(body["message"], str) and body["message"], body
    for leak in LEAKS:
        assert leak not in text, text
    return body


def without_request_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


def claims(token: str) -> dict:
    return jwt.decode(token, JWT_SECRET, algorithms=["HS256"])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(**overrides) -> str:
    now = int(time.time())
    payload = {"sub": str(uuid.uuid4()), "role": "user", "iat": now, "exp": now + 600}
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def hs512(payload: dict) -> str:
    """The right secret under another algorithm (the test secret is short for SHA-512: silence that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(payload, JWT_SECRET, algorithm="HS512")


def basic(username: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def new_identity(prefix: str = "id") -> dict:
    username = unique(prefix)
    return {"username": username, "email": f"{username}@example.com", "password": PASSWORD}


HEADER_STYLES = {
    "token-raw": lambda t: {"token": t},
    "token-bearer": lambda t: {"token": f"Bearer {t}"},
    "authorization-bearer": lambda t: {"Authorization": f"Bearer {t}"},
    "authorization-lowercase-bearer": lambda t: {"Authorization": f"bearer {t}"},
}


# ---- registration -------------------------------------------------------------------------------------

async def test_register_with_json_body(client, db):
    ident = new_identity()
    resp = await client.post("/auth/register", json=ident)
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    c = claims(token)
    assert c["role"] == "user" and c["exp"] > time.time()
    row = await db.fetchrow("SELECT id, username, email, role FROM users WHERE username = $1", ident["username"])
    assert row is not None and str(row["id"]) == c["sub"] and row["role"] == "user"
    kinds = await db.fetch("SELECT currency_id, kind FROM wallets WHERE user_id = $1 ORDER BY currency_id", row["id"])
    assert [(k["currency_id"], k["kind"]) for k in kinds] == [(1, "user"), (2, "user"), (3, "user")]


async def test_register_with_query_string(client, db):
    ident = new_identity()
    resp = await client.post("/auth/register", params=ident)
    assert resp.status == 200, await resp.text()
    sub = claims((await resp.json())["access_token"])["sub"]
    assert await db.fetchval("SELECT username FROM users WHERE id = $1", uuid.UUID(sub)) == ident["username"]


async def test_register_stores_email_lowercase_and_profile_is_readable(client):
    ident = new_identity()
    ident["email"] = ident["email"].replace("example", "ExAmple").upper()
    resp = await client.post("/auth/register", json=ident)
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    me = await (await client.get("/user/get/id", headers={"token": token})).json()
    assert me["id"] == claims(token)["sub"]
    assert me["username"] == ident["username"]
    assert me["email"] == ident["email"].lower()
    assert me["role"] == "user"
    assert datetime.fromisoformat(me["created_at"]).utcoffset() is not None
    assert "password" not in json.dumps(me) and "hash" not in json.dumps(me)


async def test_register_rejects_bad_usernames(client, db):
    for username in ("ab", "a", "", "has space", "dash-name", "dot.name", "ünïcode", "semi;colon", "x" * 1000,
                     "new\nline", "tab\tname", "quote'name"):
        body = await error_body(await client.post("/auth/register", json={
            "username": username, "email": f"{unique()}@example.com", "password": PASSWORD}), 422)
        assert [e["loc"] for e in body["errors"]] == ["username"], (username, body)
    assert await db.fetchval("SELECT count(*) FROM users WHERE username IN ('ab', 'has space', 'dash-name')") == 0


async def test_register_accepts_word_characters(client, db):
    for prefix in ("A_1", "___", "Zz9_yY8"):
        name = prefix + uuid.uuid4().hex[:6]
        resp = await client.post("/auth/register", json={"username": name, "email": f"{unique()}@example.com",
                                                         "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", name) == 1


async def test_register_accepts_exactly_three_characters(client, db):
    name = "q" + uuid.uuid4().hex[:2]
    resp = await client.post("/auth/register", json={"username": name, "email": f"{unique()}@example.com",
                                                     "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", name) == 1


async def test_register_rejects_bad_emails(client):
    for email in ("not-an-email", "a@b", "a@@example.com", "user@", "@example.com", "user@exa mple.com",
                  "user@example..com", "user@-example.com", "", "a" * 300 + "@x.com", "user@localhost"):
        body = await error_body(await client.post("/auth/register", json={
            "username": unique(), "email": email, "password": PASSWORD}), 422)
        assert [e["loc"] for e in body["errors"]] == ["email"], (email, body)


async def test_register_enforces_the_password_policy(client, db):
    for password, need in (("Sh0rt!x", "8 characters"), ("NoDigits!!x", "digit"), ("nouppercase1!", "upper"),
                           ("NoSpecial123", "special"), ("", "8 characters"), ("alllowercase", "digit")):
        ident = {**new_identity(), "password": password}
        resp = await client.post("/auth/register", json=ident)
        body = await error_body(resp, 422)
        assert [e["loc"] for e in body["errors"]] == ["password"], (password, body)
        assert need in json.dumps(body["errors"]), (password, body)
        if password:
            assert password not in await resp.text()  # the refused password is never echoed
        assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", ident["username"]) == 0
    # The minimum that satisfies every rule is accepted.
    resp = await client.post("/auth/register", json={**new_identity(), "password": "Aa1!aaaa"})
    assert resp.status == 200, await resp.text()


async def test_register_reports_every_missing_field(client):
    body = await error_body(await client.post("/auth/register", json={}), 422)
    assert {e["loc"] for e in body["errors"]} == {"username", "email", "password"}


async def test_duplicate_username_or_email_is_one_indistinguishable_409(client, db):
    first = new_identity("dup")
    assert (await client.post("/auth/register", json=first)).status == 200
    same_name = {**new_identity(), "username": first["username"]}
    same_email = {**new_identity(), "email": first["email"]}
    same_email_upper = {**new_identity(), "email": first["email"].upper()}
    bodies = []
    for ident in (same_name, same_email, same_email_upper, first):
        resp = await client.post("/auth/register", json=ident)
        bodies.append(without_request_id(await error_body(resp, 409)))
    assert all(b == bodies[0] for b in bodies), bodies
    message = bodies[0]["message"].lower()
    assert "username or email" in message  # names both, so it reveals neither
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = ANY($1::text[])",
                             [first["username"], same_email["username"], same_email_upper["username"]]) == 1
    # The failed attempts created no wallets either.
    assert await db.fetchval("SELECT count(*) FROM wallets w JOIN users u ON u.id = w.user_id "
                             "WHERE u.email = $1", first["email"]) == 3


async def test_a_service_user_cannot_reuse_a_users_name(client):
    user = await register(client, "taken")
    resp = await client.post("/auth/register_service", headers={"X-Operator-Key": OPERATOR_KEY},
                             json={"username": user["username"], "email": f"{unique()}@example.com", "password": PASSWORD})
    await error_body(resp, 409)


async def test_passwords_are_stored_as_argon2id_hashes(client, db):
    a, b = new_identity("hash"), new_identity("hash")
    for ident in (a, b):
        assert (await client.post("/auth/register", json=ident)).status == 200
    svc = await register_service(client)
    hashes = [await db.fetchval("SELECT password_hash FROM users WHERE username = $1", name)
              for name in (a["username"], b["username"], svc["username"])]
    for stored in hashes:
        assert stored.startswith("$argon2id$"), stored
        assert PASSWORD not in stored
    assert hashes[0] != hashes[1]  # salted: the same password never hashes alike


# ---- login ------------------------------------------------------------------------------------------

_people: dict[str, dict] = {}


@pytest.fixture
async def person(client, database_url):
    """One registered user per module database, shared by tests that only read or log in."""
    if database_url not in _people:
        _people[database_url] = await register(client, "person")
    return _people[database_url]


async def test_login_with_query_string(client, person):
    resp = await client.post("/auth/login", params={"username": person["username"], "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    assert claims(token)["sub"] == person["id"] and claims(token)["role"] == "user"


async def test_login_with_json_body(client, person):
    resp = await client.post("/auth/login", json={"username": person["username"], "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    me = await (await client.get("/user/get/id", headers={"token": token})).json()
    assert me["id"] == person["id"]


async def test_login_failures_look_alike(client, person):
    wrong = await client.post("/auth/login", json={"username": person["username"], "password": PASSWORD + "x"})
    unknown = await client.post("/auth/login", json={"username": unique("ghost"), "password": PASSWORD})
    bodies = [without_request_id(await error_body(r, 401)) for r in (wrong, unknown)]
    assert bodies[0] == bodies[1] == {"status": 401, "code": "invalid_credentials", "message": "Invalid credentials"}


async def test_login_password_is_case_sensitive(client, person):
    await error_body(await client.post("/auth/login", params={"username": person["username"],
                                                              "password": PASSWORD.swapcase()}), 401)
    await error_body(await client.post("/auth/login", params={"username": person["username"].upper(),
                                                              "password": PASSWORD}), 401)


async def test_basic_auth_token(client, person):
    resp = await client.get("/user/get/token", headers=basic(person["username"], PASSWORD))
    assert resp.status == 200, await resp.text()
    assert claims((await resp.json())["access_token"])["sub"] == person["id"]


async def test_basic_auth_malformed_is_401(client, person):
    for header in (None, "Basic", "Basic !!!notbase64!!!", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
                   "Basic " + base64.b64encode(b"no-colon-here").decode(), f"Bearer {person['token']}",
                   "Basic " + base64.b64encode(person["username"].encode()).decode()):
        resp = await client.get("/user/get/token", headers={"Authorization": header} if header else {})
        await error_body(resp, 401)


async def test_basic_auth_missing_asks_for_basic(client):
    resp = await client.get("/user/get/token")
    await error_body(resp, 401)
    assert resp.headers.get("WWW-Authenticate", "").lower().startswith("basic")


async def test_basic_auth_wrong_password_is_401(client, person):
    body = await error_body(await client.get("/user/get/token", headers=basic(person["username"], "Wr0ng!pass")), 401)
    assert body["message"] == "Invalid credentials"


async def test_user_id_in_every_header_style(client, person):
    for style, headers in HEADER_STYLES.items():
        resp = await client.get("/user/get/id", headers=headers(person["token"]))
        assert resp.status == 200, (style, await resp.text())
        assert (await resp.json())["id"] == person["id"], style


# ---- service users ---------------------------------------------------------------------------------

async def test_register_service_with_operator_key_json_body(client, db):
    ident = new_identity("svc")
    resp = await client.post("/auth/register_service", headers={"X-Operator-Key": OPERATOR_KEY}, json=ident)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    token_claims = claims(body["access_token"])
    assert (token_claims["role"], token_claims["sub"]) == ("service", body["user_id"])
    rows = await db.fetch("SELECT currency_id, kind FROM wallets WHERE user_id = $1 ORDER BY currency_id, kind",
                          uuid.UUID(body["user_id"]))
    assert [(r["currency_id"], r["kind"]) for r in rows] == [
        (c, k) for c in (1, 2, 3) for k in ("gateway", "service")]
    assert await db.fetchval("SELECT role FROM users WHERE id = $1", uuid.UUID(body["user_id"])) == "service"


async def test_register_service_with_query_string(client, db):
    ident = new_identity("svcq")
    resp = await client.post("/auth/register_service", headers={"X-Operator-Key": OPERATOR_KEY}, params=ident)
    assert resp.status == 200, await resp.text()
    assert await db.fetchval("SELECT role FROM users WHERE username = $1", ident["username"]) == "service"


async def test_register_service_without_the_operator_key_is_403(client, db):
    for key in (None, "", "wrong-key", OPERATOR_KEY + "x", OPERATOR_KEY[:-1], OPERATOR_KEY.upper()):
        ident = new_identity("svcx")
        headers = {} if key is None else {"X-Operator-Key": key}
        body = await error_body(await client.post("/auth/register_service", headers=headers, json=ident), 403)
        assert "operator" in body["message"].lower(), (key, body)
        assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", ident["username"]) == 0
        # The key in the body or query string is not the header.
        resp = await client.post("/auth/register_service", params={"X-Operator-Key": OPERATOR_KEY},
                                 json={**ident, "operator_key": OPERATOR_KEY}, headers=headers)
        await error_body(resp, 403)


async def test_register_service_with_a_user_token_is_still_403(client, person, db):
    ident = new_identity("svct")
    resp = await client.post("/auth/register_service", headers={"Authorization": f"Bearer {person['token']}"}, json=ident)
    await error_body(resp, 403)


async def test_service_registration_closed_when_no_key_configured(make_client, db):
    client = await make_client(operator_key=None)
    for headers in ({}, {"X-Operator-Key": ""}, {"X-Operator-Key": OPERATOR_KEY}):
        ident = new_identity("closed")
        body = await error_body(await client.post("/auth/register_service", headers=headers, json=ident), 403)
        assert "closed" in body["message"] and "WALLETD_OPERATOR_KEY" in body["message"], body
        assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", ident["username"]) == 0


async def test_service_registration_open_in_development_mode(make_client):
    client = await make_client(operator_key=None, open_service_registration=True)
    resp = await client.post("/auth/register_service", json=new_identity("open"))
    assert resp.status == 200, await resp.text()
    assert claims((await resp.json())["access_token"])["role"] == "service"


async def test_the_development_switch_opens_registration_beside_a_generated_key(make_client):
    # Only a generated key can sit beside the switch: Settings.from_env refuses an explicit one.
    client = await make_client(open_service_registration=True)
    for headers in ({}, {"X-Operator-Key": "wrong"}, {"X-Operator-Key": OPERATOR_KEY}):
        resp = await client.post("/auth/register_service", headers=headers, json=new_identity("both"))
        assert resp.status == 200, await resp.text()
        assert claims((await resp.json())["access_token"])["role"] == "service"


@pytest.mark.parametrize("switch", ["1", "true", "on"])
def test_an_explicit_key_and_the_switch_are_refused_together(switch):
    env = {"WALLETD_OPEN_SERVICE_REGISTRATION": switch, "WALLETD_OPERATOR_KEY": "k" * 32}
    with pytest.raises(ConfigError, match="WALLETD_OPEN_SERVICE_REGISTRATION=1 and WALLETD_OPERATOR_KEY"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "WALLETD_OPEN_SERVICE_REGISTRATION": "0"}).operator_key == "k" * 32


async def test_service_login_query_and_body(client):
    svc = await register_service(client)
    for kwargs in ({"params": {"username": svc["username"], "password": PASSWORD}},
                   {"json": {"username": svc["username"], "password": PASSWORD}}):
        resp = await client.get("/service/auth/login", **kwargs)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["user_id"] == svc["id"]
        token_claims = claims(body["access_token"])
        assert (token_claims["sub"], token_claims["role"]) == (svc["id"], "service")


async def test_roles_do_not_cross_at_login(client, person):
    svc = await register_service(client)
    # A user's credentials fail at the service login ...
    resp = await client.get("/service/auth/login", params={"username": person["username"], "password": PASSWORD})
    assert without_request_id(await error_body(resp, 401)) == {"status": 401, "code": "invalid_credentials", "message": "Invalid credentials"}
    # ... and a service user's at the user logins.
    resp = await client.post("/auth/login", params={"username": svc["username"], "password": PASSWORD})
    assert without_request_id(await error_body(resp, 401)) == {"status": 401, "code": "invalid_credentials", "message": "Invalid credentials"}
    await error_body(await client.get("/user/get/token", headers=basic(svc["username"], PASSWORD)), 401)
    # Wrong password at the service login is the same 401.
    resp = await client.get("/service/auth/login", params={"username": svc["username"], "password": "Wr0ng!pass"})
    await error_body(resp, 401)


# ---- token attacks --------------------------------------------------------------------------------

USER_ENDPOINTS = [
    ("GET", "/user/get/id", None),
    ("GET", "/user/wallets", None),
    ("GET", "/user/wallet", {"wallet_id": str(uuid.uuid4())}),
    ("POST", "/user/create/external_wallet", {"wallet_name": "card", "currency_id": "1"}),
    ("GET", "/user/transactions", None),
]
SERVICE_ENDPOINTS = [
    ("GET", "/service/exchange-rates/last-update", None),
    ("PUT", "/service/transaction/deposit", {"transaction_id": str(uuid.uuid4()), "new_status": "paid"}),
]


def forged_tokens(user: dict, other: dict, service: dict) -> dict[str, dict]:
    """Header sets that must all be refused on a user endpoint."""
    now = int(time.time())
    good = user["token"]
    header, payload, signature = good.split(".")
    tampered = b64url(json.dumps({**claims(good), "sub": other["id"]}).encode())
    escalated = b64url(json.dumps({**claims(good), "exp": now + 10 ** 8}).encode())
    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": user["id"], "role": "user", "iat": now, "exp": now + 600}).encode())
    return {
        "expired": {"Authorization": "Bearer " + mint(sub=user["id"], iat=now - 7200, exp=now - 3600)},
        "expired-token-header": {"token": mint(sub=user["id"], iat=now - 7200, exp=now - 1)},
        "service-token": {"Authorization": f"Bearer {service['token']}"},
        "alg-none": {"Authorization": f"Bearer {none_header}.{body}."},
        "alg-none-with-signature": {"token": f"{none_header}.{body}.{signature}"},
        "tampered-payload": {"Authorization": f"Bearer {header}.{tampered}.{signature}"},
        "extended-expiry": {"token": f"Bearer {header}.{escalated}.{signature}"},
        "bad-signature": {"Authorization": "Bearer " + jwt.encode(claims(good), "another-secret-" + "y" * 40,
                                                                  algorithm="HS256")},
        "truncated-signature": {"Authorization": f"Bearer {good[:-3]}"},
        "hs512": {"Authorization": "Bearer " + hs512(claims(good))},
        "unknown-role": {"Authorization": "Bearer " + mint(sub=user["id"], role="admin")},
        "operator-role": {"Authorization": "Bearer " + mint(sub=user["id"], role="operator")},
        "no-exp": {"Authorization": "Bearer " + mint(sub=user["id"], exp=None)},
        "no-role": {"Authorization": "Bearer " + mint(sub=user["id"], role=None)},
        "no-sub": {"Authorization": "Bearer " + mint(sub=None)},
        "sub-not-uuid": {"Authorization": "Bearer " + mint(sub="admin")},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "garbage-token-header": {"token": "garbage"},
        "empty-bearer": {"Authorization": "Bearer "},
        "empty-token-header": {"token": ""},
        "basic-instead-of-bearer": basic(user["username"], PASSWORD),
        "missing": {},
    }


_casts: dict[str, tuple] = {}


@pytest.fixture
async def cast(client, database_url):
    if database_url not in _casts:
        user, other = await register(client, "victim"), await register(client, "other")
        _casts[database_url] = (user, other, await register_service(client))
    return _casts[database_url]


async def call(client, method, path, params, headers):
    return await client.request(method, path, params=params, headers=headers)


async def test_the_genuine_token_works_on_every_user_endpoint(client, cast):
    user, _, _ = cast
    for method, path, params in USER_ENDPOINTS:
        if path == "/user/wallet":
            params = {"wallet_id": user["wallets"][1]["id"]}
        resp = await call(client, method, path, params, user["headers"])
        assert resp.status == 200, (path, await resp.text())


async def test_forged_expired_and_wrong_role_tokens_are_401_on_user_endpoints(client, cast):
    user, other, service = cast
    for name, headers in forged_tokens(user, other, service).items():
        for method, path, params in USER_ENDPOINTS:
            resp = await call(client, method, path, params, headers)
            body = await error_body(resp, 401)
            assert body["status"] == 401, (name, path)


async def test_missing_token_is_401_not_422(client):
    # No token and no parameters: authentication is checked first.
    for method, path, _ in USER_ENDPOINTS + SERVICE_ENDPOINTS:
        body = await error_body(await client.request(method, path), 401)
        assert "errors" not in body, (path, body)


async def test_user_token_is_401_on_service_endpoints(client, cast):
    user, _, service = cast
    for method, path, params in SERVICE_ENDPOINTS:
        for headers in (user["headers"], {"token": user["token"]},
                        {"Authorization": "Bearer " + mint(sub=service["id"], role="user")}):
            await error_body(await call(client, method, path, params, headers), 401)
        # The genuine service token gets past authentication on the same endpoint.
        resp = await call(client, method, path, params, service["headers"])
        assert resp.status != 401, (path, await resp.text())


async def test_valid_token_for_a_user_that_does_not_exist_is_401(client):
    resp = await client.get("/user/get/id", headers={"token": mint()})
    await error_body(resp, 401)


async def test_token_in_the_query_string_is_not_accepted(client, cast):
    user, _, _ = cast
    await error_body(await client.get("/user/get/id", params={"token": user["token"]}), 401)
