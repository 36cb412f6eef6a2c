"""The JSON log: one http.request line per request, audit events, and no credential ever logged."""

from __future__ import annotations

import base64
import json
import re
import uuid

from tests.conftest import OPERATOR_KEY, register, unique


def events(log_tap) -> list[dict]:
    parsed = []
    for line in log_tap.lines:
        parsed.append(json.loads(line))  # every line is one JSON object
    return parsed


def named(log_tap, event: str) -> list[dict]:
    return [e for e in events(log_tap) if e.get("event") == event]


async def test_one_request_line_per_request_with_the_response_request_id(client, log_tap):
    responses = [await client.get("/health"), await client.get("/user/wallets"),
                 await client.post("/auth/login", json={"username": "nobody_x", "password": "x"}),
                 await client.get("/no/such/path")]
    lines = named(log_tap, "http.request")
    assert len(lines) == len(responses)
    for resp, line, (method, path, status) in zip(responses, lines, [
            ("GET", "/health", 200), ("GET", "/user/wallets", 401), ("POST", "/auth/login", 401),
            ("GET", "/no/such/path", 404)], strict=False):
        request_id = resp.headers["X-Request-ID"]
        assert request_id and line["request_id"] == request_id
        assert (line["method"], line["path"], line["status"], resp.status) == (method, path, status, status)
        assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
        assert line["level"] == "info" and "timestamp" in line
        if resp.status >= 400:
            assert (await resp.json())["request_id"] == request_id
    assert len({r.headers["X-Request-ID"] for r in responses}) == len(responses)  # unique per request
    assert lines[1]["route"] == "/user/wallets"


async def test_walletd_answers_its_own_request_id_and_logs_a_clients_beside_it(client, log_tap):
    mine = "trace-" + uuid.uuid4().hex
    resp = await client.get("/health", headers={"X-Request-ID": mine})
    ours = resp.headers["X-Request-ID"]
    assert ours != mine and re.fullmatch(r"[0-9a-f]{24}", ours)
    for unusable in ("x" * 65, "tab\there", ""):  # too long, not printable, empty: not kept at all
        await client.get("/health", headers={"X-Request-ID": unusable})
    lines = named(log_tap, "http.request")
    assert [(line["request_id"], line.get("client_request_id")) for line in lines[:1]] == [(ours, mine)]
    assert [line.get("client_request_id") for line in lines[1:]] == [None, None, None]
    assert "x" * 65 not in "".join(log_tap.lines)


async def test_request_ids_are_random_not_a_count_of_anyones_requests(client):
    ids = [(await client.get("/health")).headers["X-Request-ID"] for _ in range(40)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    numbers = [int(i, 16) for i in ids]
    # A counter (or a clock) would make neighbours close; 96 random bits make them far apart.
    assert min(abs(a - b) for a, b in zip(numbers, numbers[1:], strict=False)) > 2**40
    # and no shared prefix (a per-process prefix tells processes apart, and then counts them)
    assert len({i[:4] for i in ids}) > 20


async def test_audit_events_for_registration_and_login(client, log_tap):
    user = await register(client, "audit")
    registered = named(log_tap, "auth.registered")
    assert [(e["user_id"], e["username"], e["role"]) for e in registered] == [(user["id"], user["username"], "user")]

    log_tap.clear()
    resp = await client.post("/auth/login", params={"username": user["username"], "password": "Str0ng!pass"})
    assert resp.status == 200
    logins = named(log_tap, "auth.login")
    assert [(e["user_id"], e["role"]) for e in logins] == [(user["id"], "user")]
    assert logins[0]["request_id"] == resp.headers["X-Request-ID"]
    request_line = named(log_tap, "http.request")[-1]
    assert request_line["principal"] == user["id"]

    log_tap.clear()
    resp = await client.post("/auth/login", json={"username": user["username"], "password": "Wr0ng!pass"})
    assert resp.status == 401
    failed = named(log_tap, "auth.login_failed")
    # The user id, never the typed name (people type passwords into username fields).
    assert [(e["user_id"], e["request_id"]) for e in failed] == [(user["id"], resp.headers["X-Request-ID"])]
    assert "username" not in failed[0]
    assert named(log_tap, "auth.login") == []


async def test_no_password_token_or_credential_ever_reaches_the_log(client, log_tap):
    username = unique("secret")
    password = "Pa55word!" + uuid.uuid4().hex[:10]
    wrong_password = "Wr0ng!" + uuid.uuid4().hex[:10]
    service_password = "Svc!Pa55" + uuid.uuid4().hex[:10]
    identity = {"username": username, "email": f"{username}@example.com", "password": password}

    # Registration and login with the password in the query string, as the original clients do.
    reg = await client.post("/auth/register", params=identity)
    assert reg.status == 200, await reg.text()
    tokens = [(await reg.json())["access_token"]]
    login = await client.post("/auth/login", params={"username": username, "password": password})
    assert login.status == 200
    tokens.append((await login.json())["access_token"])
    bad = await client.post("/auth/login", params={"username": username, "password": wrong_password})
    assert bad.status == 401
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    via_basic = await client.get("/user/get/token", headers={"Authorization": f"Basic {basic}"})
    assert via_basic.status == 200
    tokens.append((await via_basic.json())["access_token"])
    for headers in ({"token": tokens[0]}, {"token": f"Bearer {tokens[1]}"}, {"Authorization": f"Bearer {tokens[2]}"}):
        assert (await client.get("/user/get/id", headers=headers)).status == 200
    # A refused token is not logged either.
    forged = tokens[0][:-4] + "AAAA"
    assert (await client.get("/user/wallets", headers={"token": forged})).status == 401
    # Service registration (operator key) and login, password again in the query string.
    svc_name = unique("svcsecret")
    svc = await client.post("/auth/register_service", headers={"X-Operator-Key": OPERATOR_KEY},
                            params={"username": svc_name, "email": f"{svc_name}@example.com", "password": service_password})
    assert svc.status == 200, await svc.text()
    tokens.append((await svc.json())["access_token"])
    svc_login = await client.get("/service/auth/login", params={"username": svc_name, "password": service_password})
    assert svc_login.status == 200
    tokens.append((await svc_login.json())["access_token"])
    # A refused registration (bad password policy) with the password in the query string.
    weak = "weakpass" + uuid.uuid4().hex[:6]
    assert (await client.post("/auth/register", params={**identity, "username": unique(), "password": weak})).status == 422
    # A duplicate registration that fails deep in the database.
    assert (await client.post("/auth/register", params=identity)).status == 409

    text = "\n".join(log_tap.lines)
    assert text, "nothing was logged"
    assert len(named(log_tap, "http.request")) == 12
    secrets = [password, wrong_password, service_password, weak, basic, OPERATOR_KEY, forged, *tokens]
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... leaked into the log"
    for token in tokens:
        for part in token.split("."):  # not even the signature or the claims segment alone
            assert part not in text
    assert "password=" not in text and "?" not in "".join(e.get("path", "") for e in events(log_tap))
    # The audit events are there, so the scan looked at real output.
    assert named(log_tap, "auth.registered") and named(log_tap, "auth.login_failed")


async def test_log_redaction_guards_against_careless_fields(log_tap):
    """Even a developer passing a secret by mistake does not get it into the log."""
    from walletd.logs import get_logger

    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    get_logger("walletd.test").info("careless", password="hunter2!", token=token, authorization="Basic abc",
                                    note=f"sent {token} to the client", operator_key=OPERATOR_KEY)
    (line,) = named(log_tap, "careless")
    assert line["password"] == line["token"] == line["authorization"] == line["operator_key"] == "[redacted]"
    assert token not in json.dumps(line) and "hunter2!" not in json.dumps(line)
    assert line["note"] == "sent [jwt] to the client"


async def test_traceback_and_library_text_is_redacted(log_tap):
    """A traceback quotes what the failing code held (a query string, a header, a dict); those
    credentials are cut from its text as from the line's own fields, for walletd's lines and for
    a library's (stdlib logging) alike."""
    import logging

    from walletd.logs import get_logger

    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    held = (f"GET /auth/login?username=bob&password=hunter2-pw HTTP/1.1 | Authorization: Basic dXNlcjpodW50ZXIy "
            f"| token: {jwt_like} | {{'secret': 'whsec_abcdef123456', 'X-Operator-Key': 'op-key-987'}}")
    try:
        raise ValueError(held)
    except ValueError:
        get_logger("walletd.test").exception("test.failed")
        logging.getLogger("aiohttp.server").exception("Error handling request: %s", held)
    text = "\n".join(log_tap.lines)
    lines = [json.loads(line) for line in log_tap.lines]
    assert [line["event"] for line in lines][0] == "test.failed" and "Traceback" in lines[0]["exception"]
    assert "ValueError" in lines[1]["exception"]
    for secret in ("hunter2-pw", "dXNlcjpodW50ZXIy", jwt_like, "whsec_abcdef123456", "op-key-987"):
        assert secret not in text, secret
    assert "password=[redacted]" in text and "Basic [redacted]" in text and "username=bob" in text
