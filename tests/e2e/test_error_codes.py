"""Every error answers {status, code, message, request_id}: `code` is stable snake_case, 401s say
how to authenticate, and docs/errors.md and the OpenAPI document list every code."""

from __future__ import annotations

import base64
import re
import time
import uuid

import jwt

from tests.conftest import JWT_SECRET, REPO_ROOT, fund, register, register_service
from walletd.handlers.errors import catalogue

CODE = re.compile(r"^[a-z][a-z0-9_]*$")


async def error(resp, status: int, code: str) -> dict:
    body = await resp.json()
    assert resp.status == status, body
    assert body["status"] == status and body["code"] == code, body
    assert CODE.match(body["code"]) and body["message"] and body["request_id"] == resp.headers["X-Request-ID"], body
    return body


async def test_expired_garbage_and_wrong_role_tokens_are_told_apart(client):
    user, service = await register(client, "codes"), await register_service(client)
    now = int(time.time())
    expired = jwt.encode({"sub": user["id"], "role": "user", "iat": now - 100, "exp": now - 10}, JWT_SECRET,
                         algorithm="HS256")
    forged = jwt.encode({"sub": user["id"], "role": "user", "iat": now, "exp": now + 60}, "another-secret-" + "y" * 40,
                        algorithm="HS256")
    cases = [
        ({}, "token_missing", 'Bearer realm="walletd"'),
        ({"Authorization": f"Bearer {expired}"}, "token_expired", 'error="invalid_token"'),
        ({"token": expired}, "token_expired", 'error="invalid_token"'),
        ({"Authorization": "Bearer garbage"}, "token_invalid", 'error="invalid_token"'),
        ({"Authorization": f"Bearer {forged}"}, "token_invalid", 'error="invalid_token"'),
        (service["headers"], "wrong_role", 'error="invalid_token"'),
    ]
    for headers, code, challenge in cases:
        resp = await client.get("/user/wallets", headers=headers)
        body = await error(resp, 401, code)
        assert body["message"].startswith(("Invalid token", "Not authenticated")), body  # the original's text
        assert resp.headers["WWW-Authenticate"].startswith("Bearer "), code
        assert challenge in resp.headers["WWW-Authenticate"], (code, resp.headers["WWW-Authenticate"])
    assert "error=" not in (await client.get("/user/wallets")).headers["WWW-Authenticate"]  # RFC 6750: none sent
    resp = await client.put("/service/transaction/deposit", headers=user["headers"],
                            params={"transaction_id": str(uuid.uuid4()), "new_status": "paid"})
    assert "service" in (await error(resp, 401, "wrong_role"))["message"]


async def test_basic_auth_failures_carry_a_basic_challenge(client):
    resp = await client.get("/user/get/token")
    await error(resp, 401, "token_missing")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="walletd"'
    bad = base64.b64encode(b"nobody_here:Wr0ng!pass").decode()
    resp = await client.get("/user/get/token", headers={"Authorization": f"Basic {bad}"})
    await error(resp, 401, "invalid_credentials")
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="walletd"'
    resp = await client.post("/auth/login", params={"username": "nobody_here", "password": "Wr0ng!pass"})
    await error(resp, 401, "invalid_credentials")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_invalid_amounts_say_why(client):
    user, other = await register(client, "amounts"), await register(client, "amounts")
    reasons = {
        "abc": "not a number", "1,5": "not a number", "NaN": "not a number",
        "-5": "amount must be greater than 0", "0": "amount must be greater than 0",
        "1e20": "amount must be at most 1000000000000000", "0.00000000001": "amount rounds to 0 at 10 decimal places",
        "1" * 70: "amount has more than 64 characters",
    }
    for amount, reason in reasons.items():
        resp = await client.post("/wallet/transfer", headers=user["headers"], params={
            "source_wallet_id": user["wallets"][1]["id"], "target_wallet_id": other["wallets"][1]["id"],
            "amount": amount})
        body = await error(resp, 400, "invalid_amount")
        assert body["message"].startswith(f"Invalid amount: {reason}"), (amount, body)
        assert [e["loc"] for e in body["errors"]] == ["amount"], body


async def test_domain_and_request_errors_have_codes(client):
    user, other, service = await register(client, "c"), await register(client, "c"), await register_service(client)
    await fund(client, user, service, 1, "10")
    transfer = {"source_wallet_id": user["wallets"][1]["id"], "target_wallet_id": other["wallets"][1]["id"]}
    await error(await client.post("/wallet/transfer", headers=user["headers"], params={**transfer, "amount": "50"}),
                400, "insufficient_funds")
    await error(await client.post("/wallet/transfer", headers=user["headers"], params={
        "source_wallet_id": other["wallets"][1]["id"], "target_wallet_id": user["wallets"][1]["id"], "amount": "1"}),
        400, "wallet_not_found")
    await error(await client.get("/user/wallet", headers=user["headers"], params={"wallet_id": str(uuid.uuid4())}),
                404, "wallet_not_found")
    await error(await client.post("/wallet/transfer", headers=user["headers"], params={"amount": "1"}),
                422, "validation_failed")
    await error(await client.post("/wallet/transfer", headers={**user["headers"], "Idempotency-Key": "k" * 129},
                                  params={**transfer, "amount": "1"}), 400, "invalid_idempotency_key")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    ok = await client.post("/wallet/transfer", headers={**user["headers"], **key}, params={**transfer, "amount": "1"})
    assert ok.status == 200, await ok.text()
    await error(await client.post("/wallet/transfer", headers={**user["headers"], **key},
                                  params={**transfer, "amount": "2"}), 422, "idempotency_key_reused")
    await error(await client.post("/auth/register", json={"username": user["username"], "email": "x@example.com",
                                                          "password": "Str0ng!pass"}), 409, "account_exists")
    await error(await client.post("/auth/register_service", json={"username": "svc_x1", "email": "s@example.com",
                                                                  "password": "Str0ng!pass"}),
                403, "operator_key_required")
    await error(await client.get("/no/such/path"), 404, "not_found")
    resp = await client.get("/auth/register")
    await error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    await error(await client.post("/auth/login", data="a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                415, "unsupported_media_type")
    await error(await client.post("/auth/login", data="{", headers={"Content-Type": "application/json"}),
                400, "malformed_body")
    await error(await client.post("/auth/login", data=b"x" * (65 * 1024), headers={"Content-Type": "application/json"}),
                413, "payload_too_large")


def test_the_error_reference_lists_every_code_with_its_status():
    reference = (REPO_ROOT / "docs" / "errors.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", reference, re.MULTILINE))
    expected = {(code, str(status)) for code, status, _ in catalogue()}
    assert rows == expected, (expected - rows, rows - expected)


async def test_openapi_lists_every_code(client):
    doc = await (await client.get("/openapi.json")).json()
    for code, status, _ in catalogue():
        assert f"| `{code}` | {status} |" in doc["info"]["description"], code
    assert "code" in doc["components"]["schemas"]["ErrorOut"]["required"]


def test_every_domain_error_has_a_code_and_a_status():
    import inspect

    from walletd.domain import errors
    from walletd.handlers.errors import STATUS

    for name, cls in vars(errors).items():
        if inspect.isclass(cls) and issubclass(cls, errors.DomainError) and cls is not errors.DomainError:
            assert cls.code != errors.DomainError.code and CODE.match(cls.code), name
            assert any(base in STATUS for base in cls.__mro__ if base is not errors.DomainError), name
